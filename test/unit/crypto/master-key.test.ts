import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveMasterKeys } from '../../../src/crypto/master-key.js';

const ROOT = resolve(import.meta.dirname, '..', '..', '..');
const dir = mkdtempSync(join(tmpdir(), 'fv-masterkey-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const source = (masterKeyFile: string) => ({ masterKey: '', masterKeyFile, previousMasterKeys: [] });

describe('master key file', () => {
  it('is created once (mode 0600, 64 hex characters) and read back after', () => {
    const file = join(dir, 'a', 'master.key');
    const first = resolveMasterKeys(source(file));
    expect(first.created).toBe(true);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readFileSync(file, 'utf8')).toMatch(/^[0-9a-f]{64}\n$/);
    const again = resolveMasterKeys(source(file));
    expect(again).toMatchObject({ created: false });
    expect(again.current.equals(first.current)).toBe(true);
    // Nothing but the key is left in its directory.
    expect(readdirSync(join(dir, 'a'))).toEqual(['master.key']);
  });

  it('processes that start at the same moment all end up with the one key', async () => {
    const file = join(dir, 'race', 'master.key');
    // Each process waits (spinning) for the same instant, so that they all look for the file within a millisecond.
    const at = Date.now() + 3000;
    const script = `import { resolveMasterKeys } from './src/crypto/master-key.ts';
while (Date.now() < ${at});
const k = resolveMasterKeys({ masterKey: '', masterKeyFile: ${JSON.stringify(file)}, previousMasterKeys: [] });
process.stdout.write(k.current.toString('hex') + ' ' + k.created);`;
    const run = () =>
      new Promise<string>((done, fail) =>
        // At the lowest priority: their spinning must not slow the tests that run beside this one.
        execFile('nice', ['-n', '19', process.execPath, '--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT }, (err, out, stderr) =>
          err ? fail(new Error(stderr || err.message)) : done(out),
        ),
      );
    const outs = await Promise.all(Array.from({ length: 8 }, run));
    const keys = new Set(outs.map((o) => o.split(' ')[0]));
    expect(keys.size).toBe(1);
    expect([...keys][0]).toBe(readFileSync(file, 'utf8').trim());
    // Exactly one of them made it.
    expect(outs.filter((o) => o.endsWith('true'))).toHaveLength(1);
    expect(readdirSync(join(dir, 'race'))).toEqual(['master.key']);
  }, 60_000);

  it('a file that cannot be made or read is named, with the way out', () => {
    const notADir = join(dir, 'plain');
    writeFileSync(notADir, 'x');
    expect(() => resolveMasterKeys(source(join(notADir, 'master.key')))).toThrow(
      /security\.masterKeyFile: cannot create .*plain\/master\.key: E[A-Z]+: .*; make it writable, or set security\.masterKey \(FLASHVERIFY_MASTER_KEY\)/,
    );
    const isADir = join(dir, 'keydir');
    mkdirSync(isADir);
    expect(() => resolveMasterKeys(source(isADir))).toThrow(/cannot read .*keydir: .*EISDIR.*make it readable/);
  });
});
