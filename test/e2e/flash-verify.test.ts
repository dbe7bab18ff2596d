import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deletePrefix, http, REDIS_URL, waitFor } from '../helpers/engine.js';
import { findFreePort, sipUriUser, startSippUas, type SippUas } from '../helpers/sipp.js';

const ROOT = resolve(import.meta.dirname, '..', '..');
const run = promisify(execFile);

/**
 * A new user's path, as the README tells it: the `flashverify` CLI creates an
 * account, `flashverify start` runs the engine as its own process, SIPp plays
 * the handset's network, the test reads the caller ID SIPp received (as a
 * handset shows it) and verifies with its last 4 digits.
 */
describe('flash call verified end to end (engine process + SIPp)', () => {
  const prefix = `fve2e-${randomBytes(4).toString('hex')}`;
  const dir = mkdtempSync(join(tmpdir(), 'fv-e2e-'));
  const configFile = join(dir, 'config.yaml');
  let uas: SippUas;
  let engine: ChildProcess;
  let output = '';
  let base = '';
  let auth = '';

  const cli = (...args: string[]) =>
    run(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args, '--config', configFile], { cwd: ROOT, env: { ...process.env, LOG_LEVEL: 'warn' } });

  beforeAll(async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', maxLifetimeMs: 60_000 });
    const httpPort = await findFreePort();
    const sipPort = await findFreePort();
    base = `http://127.0.0.1:${httpPort}`;
    writeFileSync(
      configFile,
      [
        `http: { host: 127.0.0.1, port: ${httpPort} }`,
        `redis: { url: "${REDIS_URL}", prefix: ${prefix} }`,
        `security: { masterKeyFile: "${join(dir, 'master.key')}" }`,
        `flash: { ringMs: 300 }`,
        `sip:`,
        `  listen: { host: 127.0.0.1, port: ${sipPort} }`,
        `  trunks: [{ name: sipp, uri: "${uas.uri}" }]`,
      ].join('\n'),
    );
    const created = JSON.parse((await cli('account', 'create', '--name', 'e2e', '--balance', '5', '--active')).stdout) as Record<string, string>;
    expect(created.api_key).toMatch(/^[0-9a-f]{32}$/);
    expect(created.api_secret).toMatch(/^[0-9a-f]{64}$/);
    auth = 'Basic ' + Buffer.from(`${created.api_key}:${created.api_secret}`).toString('base64');

    engine = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'start', '--role', 'all', '--config', configFile], {
      cwd: ROOT,
      env: { ...process.env, LOG_LEVEL: 'debug' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    engine.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    engine.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    await waitFor(async () => (await fetch(`${base}/healthz`).catch(() => undefined))?.ok, 15_000, 100);
  });

  afterAll(async () => {
    if (engine && engine.exitCode === null) engine.kill('SIGKILL');
    await uas?.stop();
    const redis = new Redis(REDIS_URL);
    await deletePrefix(redis, prefix);
    await redis.quit();
    rmSync(dir, { recursive: true, force: true });
  });

  it('missed call from range prefix + code, then verified with its last 4 digits', async () => {
    // The documentation's own request.
    const sent = await http(`${base}/v1/verify`, { auth, body: { phone_number: '+447700900000', method: 'flash_call' } });
    expect(sent.status).toBe(201);
    expect(sent.body).toMatchObject({ phone_number: '+447700900000', method: 'flash_call', status: 'sent', code_length: 4 });
    const id = String(sent.body.request_id);

    // What the handset shows: the caller ID of the INVITE that reached it.
    const invite = await uas.waitForMessage((m) => m.direction === 'received' && m.method === 'INVITE', 10_000);
    const callerId = sipUriUser(invite.header('from'))!;
    expect(callerId).toMatch(/^\+44190873\d{4}$/);
    expect((await uas.waitForExit(10_000)).code).toBe(0); // rang, got CANCEL, sent 487, got ACK

    const delivered = await waitFor(async () => {
      const r = await http(`${base}/v1/verify/${id}`, { auth });
      return r.body.status === 'delivered' ? r.body : undefined;
    });
    expect(delivered.verified_at).toBeNull();

    const checked = await http(`${base}/v1/verify/check`, { auth, body: { request_id: id, code: callerId.slice(-4) } });
    expect([checked.status, checked.body]).toEqual([200, { request_id: id, status: 'verified', phone_number: '+447700900000' }]);

    const status = await http(`${base}/v1/verify/${id}`, { auth });
    expect(status.body.status).toBe('verified');
    expect(status.body.verified_at).toMatch(/Z$/);
    expect((status.body.status_history as { status: string }[]).map((h) => h.status)).toEqual(['sent', 'delivered', 'verified']);

    // The caller ID carries the code: it must never reach the logs.
    expect(output).toContain('flash call finished');
    expect(output).not.toContain(callerId);
  });

  it('stops cleanly on SIGTERM', async () => {
    const exited = new Promise<number | null>((r) => engine.once('exit', (code) => r(code)));
    engine.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});
