import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { deletePrefix, REDIS_URL } from '../helpers/engine.js';

const ROOT = resolve(import.meta.dirname, '..', '..');

function flashverify(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], { cwd: ROOT, env: { ...process.env, ...env } }, (err, stdout, stderr) =>
      done({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

// Each CLI run is its own Node process (about 1.5 s with tsx); give the multi-step tests room.
describe('flashverify CLI', { timeout: 90_000 }, () => {
  const prefix = `fvcli-${randomBytes(4).toString('hex')}`;
  const dir = mkdtempSync(join(tmpdir(), 'fv-cli-'));
  const env = { REDIS_URL, REDIS_PREFIX: prefix, LOG_LEVEL: 'warn' };
  const keyFile = join(dir, 'master.key');
  const config = join(dir, 'c.yaml');
  // Webhook URLs are resolved and must not be private unless allowed: loopback here, no network.
  writeFileSync(config, `security: { masterKeyFile: "${keyFile}" }\nwebhooks: { allowPrivate: true }\n`);

  afterAll(async () => {
    const redis = new Redis(REDIS_URL);
    await deletePrefix(redis, prefix);
    await redis.quit();
    rmSync(dir, { recursive: true, force: true });
  });

  it('manages an account through its whole life', async () => {
    const created = await flashverify(['account', 'create', '--name', 'acme', '--balance', '12.5', '--currency', 'EUR', '--config', config], env);
    expect(created.code).toBe(0);
    const a = JSON.parse(created.stdout) as Record<string, unknown>;
    expect(a).toMatchObject({ name: 'acme', status: 'pending', currency: 'EUR', balance: 12.5 });
    expect(a.api_key).toMatch(/^[0-9a-f]{32}$/);
    expect(a.api_secret).toMatch(/^[0-9a-f]{64}$/);
    // The master key was generated on first use, readable by its owner only.
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    const id = String(a.account_id);
    const step = async (...args: string[]) => {
      const r = await flashverify(['account', ...args, '--config', config], env);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      return JSON.parse(r.stdout) as Record<string, unknown>;
    };
    expect((await step('approve', id)).status).toBe('active');
    expect((await step('topup', id, '--amount', '7.5')).balance).toBe(20);
    expect((await step('suspend', id)).status).toBe('suspended');
    const regenerated = await step('regenerate-secret', id);
    expect(regenerated.api_key).toBe(a.api_key);
    expect(regenerated.api_secret).not.toBe(a.api_secret);
    expect((await step('set-webhook', id, '--url', 'http://127.0.0.1:9/fv')).webhook_url).toBe('http://127.0.0.1:9/fv');
    expect((await step('set-webhook', id, '--clear')).webhook_url).toBeNull();
    // Secrets are only ever printed by create / regenerate-secret.
    expect(await step('show', id)).not.toHaveProperty('api_secret');
  });

  it('sets and clears a per-account rate limit', async () => {
    const created = await flashverify(['account', 'create', '--name', 'limited', '--config', config], env);
    expect(created.code).toBe(0);
    const id = String((JSON.parse(created.stdout) as Record<string, unknown>).account_id);
    const set = await flashverify(['account', 'set-rate-limit', id, '--rps', '25', '--config', config], env);
    expect([set.code, set.stderr]).toEqual([0, '']);
    expect((JSON.parse(set.stdout) as Record<string, unknown>).rate_limit).toBe(25);
    const cleared = await flashverify(['account', 'set-rate-limit', id, '--clear', '--config', config], env);
    expect((JSON.parse(cleared.stdout) as Record<string, unknown>).rate_limit).toBeNull();
  });

  it('explains bad usage with a non-zero exit', async () => {
    const r = await flashverify(['account', 'topup', 'nope', '--config', config], env);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--amount is required/);
    const unknown = await flashverify(['account', 'show', randomBytes(4).toString('hex'), '--config', config], env);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toMatch(/no account/);
    expect((await flashverify(['frobnicate'], env)).stderr).toMatch(/unknown command/);
    const rps = await flashverify(['account', 'set-rate-limit', randomBytes(4).toString('hex'), '--rps', '0', '--config', config], env);
    expect(rps.code).not.toBe(0);
    expect(rps.stderr).toMatch(/--rps must be a positive whole number/);
  });

  it('refuses an invalid configuration listing every error, exit 78', async () => {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'http:\n  port: -1\nflash:\n  ringMs: soon\nsip:\n  trunks:\n    - { name: t, uri: "http://x" }\n');
    const r = await flashverify(['start', '--config', bad], env);
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/http\.port/);
    expect(r.stderr).toMatch(/flash\.ringMs/);
    expect(r.stderr).toMatch(/sip\.trunks\.0\.uri: must be a SIP URI/);
  });
});
