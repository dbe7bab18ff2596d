import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_SETTINGS } from '../../smsc-test/protocol.js';
import { http, waitFor } from '../helpers/engine.js';
import { engineCluster, type EngineCluster } from '../helpers/engine-process.js';
import { smscEntry, startSmsc, type TestSmsc } from '../helpers/smsc.js';

/**
 * Issue 8 for SMS: the SMS worker runs as its own `flashverify start --role
 * worker` process beside an api process. Killed with SIGKILL while submits
 * wait for their submit_sm_resp, then restarted: every accepted verification
 * ends delivered or failed with a reason, and no destination gets two
 * messages the SMSC accepted. Stopped with SIGTERM: it unbinds cleanly.
 */
const TERMINAL = ['delivered', 'verified', 'failed'];

let smsc: TestSmsc;
let cluster: EngineCluster | undefined;
beforeAll(async () => {
  smsc = await startSmsc({ maxLifetimeMs: 110_000 });
});
afterAll(async () => {
  await smsc?.stop();
});
afterEach(async () => {
  await cluster?.cleanup();
  cluster = undefined;
  await smsc.reset();
  await smsc.set({ ...DEFAULT_SETTINGS });
});

function smsCluster(): Promise<EngineCluster> {
  return engineCluster({
    worker: { lockDurationMs: 2000, stalledIntervalMs: 1000, shutdownGraceMs: 3000, smsConcurrency: 4 },
    events: { claimIdleMs: 1000 },
    api: { defaultRateLimitPerSecond: 1000 },
    fraud: { liveVerification: 'off' },
    sms: { enabled: true, smscs: [smscEntry(smsc, { responseTimeoutMs: 5000 })], retry: { firstDelayMs: 200, maxDelayMs: 800, maxAttempts: 6 } },
  });
}

describe('SMS worker crash and shutdown', { timeout: 60_000 }, () => {
  it('SIGKILL with submits in flight: every verification ends delivered or failed with a reason, none accepted twice', async () => {
    await smsc.set({ respDelayMs: 1500 });
    cluster = await smsCluster();
    await cluster.start('api');
    const first = await cluster.start('worker');
    const account = await cluster.account(100);
    const ids = new Map<string, string>();
    for (let i = 0; i < 10; i++) {
      const phone = `+4477009007${String(i).padStart(2, '0')}`;
      const r = await http(`${cluster.httpUrl}/v1/verify`, { auth: account.auth, body: { phone_number: phone, method: 'sms', code_length: 6 } });
      expect(r.status).toBe(201);
      ids.set(String(r.body.request_id), phone);
    }
    await waitFor(async () => (await smsc.state()).submits.length >= 4, 10_000, 25);
    first.kill('SIGKILL');
    await first.waitExit(5000);
    await smsc.set({ respDelayMs: 0 });

    await cluster.start('worker');
    const records = new Map<string, Record<string, string>>();
    await waitFor(async () => {
      for (const id of ids.keys()) records.set(id, await cluster!.redis.hgetall(cluster!.keys.verification(id)));
      return [...records.values()].every((r) => TERMINAL.includes(r.status ?? ''));
    }, 30_000, 250);

    const submits = (await smsc.state()).submits;
    for (const [id, phone] of ids) {
      // Every submit_sm the SMSC received for this number, answered or not (one the SMSC got before the kill may
      // have been stored even though its submit_sm_resp was never read): one attempt, so at most one.
      const received = submits.filter((s) => s.destination === phone.slice(1));
      expect(received.length, JSON.stringify(received)).toBeLessThanOrEqual(1);
      expect(Number(records.get(id)!.sms_attempts ?? 0), id).toBeLessThanOrEqual(1);
      const r = records.get(id)!;
      if (r.status === 'failed') expect(r.failure_reason, id).toBeTruthy();
      else expect([r.status, received.map((s) => s.status)]).toEqual(['delivered', [0]]);
    }
    // The ones in flight at the kill may have left: failed `interrupted`, never sent again; the rest were delivered.
    const failed = [...records.values()].filter((r) => r.status === 'failed');
    for (const r of failed) expect(r.failure_reason).toBe('interrupted');
    expect(failed.length).toBeLessThanOrEqual(4);
    expect([...records.values()].filter((r) => r.status === 'delivered').length).toBeGreaterThanOrEqual(6);
  });

  it('SIGTERM: the worker unbinds from the SMSC and exits 0 within the grace', async () => {
    cluster = await smsCluster();
    const worker = await cluster.start('worker');
    await waitFor(async () => (await smsc.state()).sessions.some((s) => s.bound && s.closedAt === null), 5000);
    worker.kill('SIGTERM');
    const exit = await worker.waitExit(5000);
    expect([exit.code, exit.timedOut]).toEqual([0, false]);
    const sessions = (await smsc.state()).sessions;
    expect(sessions.length).toBeGreaterThan(0);
    for (const s of sessions) expect([s.unbindReceived, s.closedAt !== null]).toEqual([true, true]);
  });
});
