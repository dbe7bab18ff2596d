import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// .ci/audit.mjs fails closed: only npm's report of a registry without the audit endpoint passes unchecked.
const script = fileURLToPath(new URL('../../../.ci/audit.mjs', import.meta.url));
const fixture = (name: string): string => fileURLToPath(new URL(`../../fixtures/audit/${name}`, import.meta.url));

function audit(name: string): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [script, '--from', fixture(name)], { encoding: 'utf8', timeout: 10_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

describe('.ci/audit.mjs', () => {
  it.each([
    ['high.json', 'high example-lib <1.2.3'],
    ['critical.json', 'critical example-lib <1.2.3'],
  ])('fails on %s and names the advisory', (name, line) => {
    const r = audit(name);
    expect(r.code).toBe(1);
    expect(r.err).toContain(line);
    expect(r.err).toContain('high/critical advisories in production dependencies');
    expect(r.err).not.toContain('minor-lib');
  });

  it.each(['clean.json', 'moderate-only.json'])('passes on %s (no high or critical)', (name) => {
    const r = audit(name);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/npm audit \(production dependencies\): \{.*"high":0.*"critical":0/);
    expect(r.err).toBe('');
  });

  it("passes, saying NOT CHECKED, only on npm's 405 from the audit endpoint (this registry's real answer)", () => {
    const r = audit('endpoint-405.json');
    expect(r.code).toBe(0);
    expect(r.err).toContain('HTTP 405 from https://registry.npmjs.org/-/npm/v1/security/advisories/bulk');
    expect(r.err).toContain('NOT CHECKED');
  });

  it.each([
    ['endpoint-500.json', '500 Internal Server Error'],
    ['network-error.json', 'ENOTFOUND'],
    ['405-other-url.json', '405 Method Not Allowed - POST https://registry.npmjs.org/some-package'],
  ])('fails on any other error: %s', (name, why) => {
    const r = audit(name);
    expect(r.code).toBe(1);
    expect(r.err).toContain(why);
    expect(r.err).not.toContain('NOT CHECKED');
  });

  it('fails when npm gave no JSON at all', () => {
    const r = spawnSync(process.execPath, [script, '--from', '/dev/null'], { encoding: 'utf8', timeout: 10_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('gave no JSON report');
  });
});
