import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { http, REDIS_URL, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { startSippUas, type SippUas } from '../helpers/sipp.js';

/**
 * Taking a trunk out of service by hand (a carrier's maintenance window): the admin API and the CLI write it to Redis,
 * every worker follows within a second. Two SIPp far ends: `primary` (priority 0) and `backup` (priority 1).
 */
let engine: TestEngine | undefined;
const sipps: SippUas[] = [];
afterEach(async () => {
  for (const s of sipps.splice(0)) await s.stop();
  await engine?.stop();
  engine = undefined;
});

const TOKEN = 'admin-token-for-trunk-tests-0123456789';
const admin = (path: string, body?: unknown) =>
  http(`${engine!.url}/admin/v1${path}`, { method: body === undefined && !path.endsWith('able') ? 'GET' : 'POST', headers: { authorization: `Bearer ${TOKEN}` }, body });

async function start(calls: { primary: number; backup: number }, flash: { ringMs?: number } = {}): Promise<{ auth: string; verify: (phone: string) => Promise<Record<string, string>> }> {
  const primary = await startSippUas({ scenario: 'uas-ring-cancel', calls: calls.primary, maxLifetimeMs: 40_000 });
  const backup = await startSippUas({ scenario: 'uas-ring-cancel', calls: calls.backup, maxLifetimeMs: 40_000 });
  sipps.push(primary, backup);
  engine = await startTestEngine(
    testConfig({
      admin: { token: TOKEN },
      flash: { ringMs: flash.ringMs ?? 100 },
      numbers: { cliCooldownSeconds: 0 },
      sip: {
        timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 },
        trunks: [
          { name: 'primary', uri: primary.uri, priority: 0, maxCalls: 5 },
          { name: 'backup', uri: backup.uri, priority: 1 },
        ],
      },
    }),
  );
  const account = await engine.account();
  const verify = async (phone: string) => {
    const r = await http(`${engine!.url}/v1/verify`, { auth: account.auth, body: { phone_number: phone } });
    expect(r.status).toBe(201);
    return waitFor(async () => {
      const h = await engine!.redis.hgetall(engine!.keys.verification(String(r.body.request_id)));
      return h.outcome || h.status === 'failed' ? h : undefined;
    }, 15_000);
  };
  return { auth: account.auth, verify };
}

async function enabledGauge(name: string): Promise<string | undefined> {
  const text = await (await fetch(`${engine!.url}/metrics`)).text();
  return new RegExp(`^flashverify_trunk_enabled\\{trunk="${name}"\\} (\\d)`, 'm').exec(text)?.[1];
}

describe('trunks taken out of service by an operator', { timeout: 45_000 }, () => {
  it('admin API: a disabled trunk gets no new call (the backup takes them), and takes them again once enabled', async () => {
    const { verify } = await start({ primary: 2, backup: 1 });
    expect((await verify('+447700900501')).trunk).toBe('primary');

    const disabled = await admin('/trunks/primary/disable', { reason: 'carrier maintenance until 02:00' });
    expect(disabled.status).toBe(200);
    expect(disabled.body).toMatchObject({ name: 'primary', enabled: false, reason: 'carrier maintenance until 02:00' });
    expect((await admin('/trunks')).body).toMatchObject({
      trunks: [
        // With its limits, and the channels in use over every worker (its call has ended).
        { name: 'primary', enabled: false, reason: 'carrier maintenance until 02:00', disabled_at: expect.stringMatching(/^\d{4}-/), cps: 200, max_calls: 5, calls_in_use: 0 },
        { name: 'backup', enabled: true, cps: 200 },
      ],
    });
    // The worker reads it within a second.
    await waitFor(async () => ((await enabledGauge('primary')) === '0' ? true : undefined), 3000);
    expect((await verify('+447700900502')).trunk).toBe('backup');
    expect(engine!.logs.some((l) => l.includes('trunk disabled by an operator') && l.includes('carrier maintenance'))).toBe(true);

    expect((await admin('/trunks/primary/enable')).body).toEqual({ name: 'primary', enabled: true });
    await waitFor(async () => ((await enabledGauge('primary')) === '1' ? true : undefined), 3000);
    expect((await verify('+447700900503')).trunk).toBe('primary');
  });

  it('a call ringing on a trunk when it is disabled goes on to its end (CANCEL at the end of its ring), delivered', async () => {
    const { auth } = await start({ primary: 1, backup: 1 }, { ringMs: 2500 });
    const created = await http(`${engine!.url}/v1/verify`, { auth, body: { phone_number: '+447700900505' } });
    const key = engine!.keys.verification(String(created.body.request_id));
    await waitFor(async () => ((await engine!.redis.hget(key, 'status')) === 'delivered' ? true : undefined), 5000);
    expect((await admin('/trunks/primary/disable')).status).toBe(200);
    await waitFor(async () => ((await enabledGauge('primary')) === '0' ? true : undefined), 3000);
    // Still ringing: not torn down by the disable.
    expect(await engine!.redis.hget(key, 'outcome')).toBeNull();
    const outcome = await waitFor(async () => (await engine!.redis.hget(key, 'outcome')) ?? undefined, 10_000);
    expect(outcome).toBe('cancelled');
    expect(await engine!.redis.hget(key, 'trunk')).toBe('primary');
    expect((await sipps[0]!.waitForExit(10_000)).code).toBe(0);
  });

  it('every trunk disabled: calls fail no_route, refunded, nothing dialled; unknown trunks and bad bodies are refused', async () => {
    const { verify } = await start({ primary: 1, backup: 1 });
    expect((await admin('/trunks/primary/disable')).body).toEqual({ name: 'primary', enabled: false, disabled_at: expect.any(String) });
    expect((await admin('/trunks/backup/disable', {})).status).toBe(200);
    await waitFor(async () => ((await enabledGauge('backup')) === '0' ? true : undefined), 3000);
    expect(await verify('+447700900504')).toMatchObject({ status: 'failed', failure_reason: 'no_route' });
    for (const s of sipps) expect(s.messages().filter((m) => m.method === 'INVITE')).toEqual([]);

    const unknown = await admin('/trunks/nope/disable');
    expect(unknown.status).toBe(404);
    expect(unknown.body).toMatchObject({ error: 'not_found', message: expect.stringContaining('no SIP trunk named "nope" (sip.trunks[].name: primary, backup)') });
    expect((await admin('/trunks/primary/disable', { reason: 42 })).status).toBe(400);
    // The admin token guards these routes as every admin route.
    expect((await http(`${engine!.url}/admin/v1/trunks`, { method: 'GET' })).status).toBe(401);
  });

  it('the CLI: flashverify trunk disable / list / enable, against the same Redis state the workers read', async () => {
    await start({ primary: 1, backup: 1 });
    const prefix = engine!.keys.prefix;
    const cli = (args: string[]) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((done) =>
        execFile(
          process.execPath,
          ['--import', 'tsx', 'src/main.ts', ...args],
          { cwd: resolve(import.meta.dirname, '..', '..'), env: { ...process.env, REDIS_URL, REDIS_PREFIX: prefix, LOG_LEVEL: 'warn' } },
          (err, stdout, stderr) => done({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
        ),
      );
    // The CLI's config has the default trunk list (one trunk, `default`): the engine's names are not in it.
    const refused = await cli(['trunk', 'disable', 'primary']);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('no SIP trunk named "primary" (sip.trunks[].name: default)');
    const off = await cli(['trunk', 'disable', 'default', '--reason', 'incident 4411']);
    expect(off.code).toBe(0);
    expect(JSON.parse(off.stdout)).toMatchObject({ name: 'default', enabled: false, reason: 'incident 4411' });
    expect(JSON.parse((await cli(['trunk', 'list'])).stdout)).toMatchObject([{ name: 'default', enabled: false, reason: 'incident 4411' }]);
    expect(await engine!.redis.hkeys(engine!.keys.trunksDisabled())).toEqual(['default']);
    expect(JSON.parse((await cli(['trunk', 'enable', 'default'])).stdout)).toEqual({ name: 'default', enabled: true });
    expect(await engine!.redis.exists(engine!.keys.trunksDisabled())).toBe(0);
  });
});
