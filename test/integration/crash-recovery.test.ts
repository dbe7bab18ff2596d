import { afterEach, describe, expect, it } from 'vitest';
import { http, waitFor } from '../helpers/engine.js';
import { engineCluster, invitesPerDestination, type EngineCluster } from '../helpers/engine-process.js';
import { startRtpReceiver, type RtpReceiver } from '../helpers/rtp-receiver.js';
import { startSippUas, type SippUas } from '../helpers/sipp.js';
import { Receiver } from '../helpers/webhook-receiver.js';

/**
 * Issue 8, "nothing lost": the api and the worker run as separate
 * `flashverify start` processes; the worker is SIGKILLed in the middle of a
 * batch of calls and started again. Every accepted verification must end
 * delivered or failed with a reason, and no destination may get a second
 * INVITE for one request (the dial is recorded before the INVITE leaves; a
 * re-run job that finds it does not dial again).
 */
const FAST_RECOVERY = {
  // A dead worker's jobs are stalled after 2 s, looked for every second; its unacknowledged events are taken over after 1 s.
  worker: { lockDurationMs: 2000, stalledIntervalMs: 1000, shutdownGraceMs: 3000 },
  events: { claimIdleMs: 1000 },
  verification: { expirySweepMs: 500 },
  api: { defaultRateLimitPerSecond: 1000 },
};
const TERMINAL = ['delivered', 'verified', 'failed'];

let cluster: EngineCluster | undefined;
let uas: SippUas | undefined;
let rtp: RtpReceiver | undefined;
afterEach(async () => {
  await uas?.stop();
  await cluster?.cleanup();
  await rtp?.close();
  uas = cluster = rtp = undefined;
});

async function createBatch(c: EngineCluster, method: 'flash_call' | 'voice', n: number, base: number): Promise<Map<string, string>> {
  const account = await c.account(100);
  const ids = new Map<string, string>();
  for (let i = 0; i < n; i++) {
    const phone = `+4477009${String(base + i).padStart(5, '0')}`;
    const r = await http(`${c.httpUrl}/v1/verify`, { auth: account.auth, body: { phone_number: phone, method } });
    expect(r.status).toBe(201);
    ids.set(String(r.body.request_id), phone);
  }
  return ids;
}

/** Waits until every request is delivered/verified/failed and returns the records. */
async function settled(c: EngineCluster, ids: Map<string, string>, timeoutMs: number): Promise<Map<string, Record<string, string>>> {
  const records = new Map<string, Record<string, string>>();
  await waitFor(
    async () => {
      for (const id of ids.keys()) records.set(id, await c.redis.hgetall(c.keys.verification(id)));
      return [...records.values()].every((r) => TERMINAL.includes(r.status ?? ''));
    },
    timeoutMs,
    250,
  ).catch(() => {
    const stuck = [...records.entries()].filter(([, r]) => !TERMINAL.includes(r.status ?? '')).map(([id, r]) => `${id}: ${r.status}`);
    throw new Error(`not settled: ${stuck.join(', ')}`);
  });
  return records;
}

describe('worker SIGKILLed mid-batch, then restarted', { timeout: 60_000 }, () => {
  it('flash calls: every verification ends delivered or failed with a reason; no number is called twice', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 20, maxLifetimeMs: 55_000 });
    cluster = await engineCluster({
      ...FAST_RECOVERY,
      flash: { ringMs: 2500 },
      worker: { ...FAST_RECOVERY.worker, flashConcurrency: 4 },
      sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] },
    });
    await cluster.start('api');
    const first = await cluster.start('worker');
    const ids = await createBatch(cluster, 'flash_call', 20, 100);

    // Kill while the first calls ring (each rings 2.5 s before its CANCEL).
    await waitFor(async () => invitesPerDestination(uas!.messages()).size >= 4, 15_000, 25);
    await new Promise((r) => setTimeout(r, 500));
    first.kill('SIGKILL');
    await first.waitExit(5000);
    const calledBeforeKill = invitesPerDestination(uas.messages()).size;
    expect(calledBeforeKill).toBeLessThan(20);

    const second = await cluster.start('worker');
    const records = await settled(cluster, ids, 40_000);

    const invites = invitesPerDestination(uas.messages());
    for (const [user, calls] of invites) expect([user, calls.size]).toEqual([user, 1]);
    // The batch went on after the restart.
    expect(invites.size).toBeGreaterThan(calledBeforeKill);
    // The jobs of the calls that were ringing stalled, ran again in the new worker, and did not dial.
    expect(second.output()).toMatch(/delivery already handed over|already past sent; not delivering again/);
    for (const [id, r] of records) {
      const phone = ids.get(id)!;
      if (r.status === 'failed') expect(r.failure_reason, id).toBeTruthy();
      // Delivered means the number rang exactly once.
      if (r.status === 'delivered') expect(invites.get(phone)?.size, phone).toBe(1);
    }
    const delivered = [...records.values()].filter((r) => r.status === 'delivered').length;
    // Calls ringing when the worker died were delivered (the caller ID was shown); the queued ones were dialled after the restart.
    expect(delivered).toBeGreaterThanOrEqual(invites.size - 1);
  });

  it('voice calls mid-prompt: answered ones stay delivered and are not called again; the rest are played after the restart', async () => {
    rtp = await startRtpReceiver();
    uas = await startSippUas({ scenario: 'uas-voice-answer', calls: 6, maxLifetimeMs: 55_000, vars: { rtp_ip: '127.0.0.1', rtp_port: rtp.port } });
    cluster = await engineCluster({
      ...FAST_RECOVERY,
      worker: { ...FAST_RECOVERY.worker, voiceConcurrency: 3 },
      sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] },
    });
    await cluster.start('api');
    const first = await cluster.start('worker');
    const ids = await createBatch(cluster, 'voice', 6, 200);

    // Kill once three calls are answered and their prompts are playing.
    await waitFor(async () => uas!.sent().filter((m) => m.status === 200 && /INVITE/.test(m.header('cseq') ?? '')).length >= 3, 15_000, 25);
    await new Promise((r) => setTimeout(r, 1000));
    first.kill('SIGKILL');
    await first.waitExit(5000);
    const calledBeforeKill = invitesPerDestination(uas.messages()).size;

    const second = await cluster.start('worker');
    const records = await settled(cluster, ids, 40_000);
    // The prompts restarted after the kill play to their end (BYE), for every call placed by the new worker.
    await waitFor(async () => uas!.requests('BYE').length >= invitesPerDestination(uas!.messages()).size - calledBeforeKill, 20_000, 250);

    const invites = invitesPerDestination(uas.messages());
    for (const [user, calls] of invites) expect([user, calls.size]).toEqual([user, 1]);
    expect(invites.size).toBeGreaterThan(calledBeforeKill);
    expect(second.output()).toMatch(/delivery already handed over|already past sent; not delivering again/);
    for (const [id, r] of records) {
      if (r.status === 'failed') expect(r.failure_reason, id).toBeTruthy();
      else expect(r.status).toBe('delivered');
    }
    // The three answered before the kill were delivered (the code was being read): not failed, not called again.
    expect([...records.values()].filter((r) => r.status === 'delivered').length).toBeGreaterThanOrEqual(3);
  });
});

/**
 * The narrow window: the dial is recorded (claimDelivery-1.lua, HSETNX dial_started) and the INVITE is on
 * the wire, but nothing has answered it yet. SIPp (`uas-no-response`) never answers, and the worker is
 * SIGKILLed as soon as every INVITE has reached it.
 */
describe('worker SIGKILLed after the dial is recorded, before any answer', { timeout: 60_000 }, () => {
  async function killOnInvites(c: EngineCluster, n: number): Promise<Map<string, string>> {
    await c.start('api');
    const first = await c.start('worker');
    const ids = await createBatch(c, 'flash_call', n, 300);
    await waitFor(async () => invitesPerDestination(uas!.messages()).size >= n, 15_000, 10);
    first.kill('SIGKILL');
    await first.waitExit(5000);
    // Not one answer went out: the kill landed between the INVITE and any 1xx.
    expect(uas!.sent()).toHaveLength(0);
    for (const id of ids.keys()) {
      const [status, dial] = await c.redis.hmget(c.keys.verification(id), 'status', 'dial_started');
      expect([status, dial === null]).toEqual(['sent', false]);
    }
    return ids;
  }

  const silentTrunk = (uri: string, maxStalledCount: number) => ({
    ...FAST_RECOVERY,
    worker: { ...FAST_RECOVERY.worker, flashConcurrency: 3, maxStalledCount },
    sip: { timers: { t1Ms: 500, t2Ms: 4000, t4Ms: 5000 }, trunks: [{ name: 'sipp', uri }] },
  });

  it.each([
    {
      title: 'the stalled job finds the dial recorded and does not dial again; the verification fails `interrupted`',
      calls: 3,
      maxStalledCount: 1,
      reason: 'interrupted',
      log: 'a previous worker already started this delivery',
    },
    {
      title: 'a job stalled beyond worker.maxStalledCount fails its verification `job_stalled`; no second dial',
      calls: 2,
      maxStalledCount: 0,
      reason: 'job_stalled',
      log: 'job stalled more than allowable limit',
    },
  ])('$title', async ({ calls, maxStalledCount, reason, log }) => {
    uas = await startSippUas({ scenario: 'uas-no-response', calls, maxLifetimeMs: 40_000, vars: { hold_ms: 25_000 } });
    cluster = await engineCluster(silentTrunk(uas.uri, maxStalledCount));
    const ids = await killOnInvites(cluster, calls);

    const second = await cluster.start('worker');
    const records = await settled(cluster, ids, 20_000);
    for (const [id, r] of records) expect([id, r.status, r.failure_reason]).toEqual([id, 'failed', reason]);
    expect(second.output()).toContain(log);
    // One INVITE transaction per number, ever (retransmissions of the first count once).
    const invites = invitesPerDestination(uas.messages());
    expect(invites.size).toBe(calls);
    for (const [user, n] of invites) expect([user, n.size]).toEqual([user, 1]);
  });
});

describe('worker SIGKILLed while claimed calls wait for a trunk channel or CPS token', { timeout: 60_000 }, () => {
  it.each([
    { wait: 'a channel (maxCalls 1)', trunk: { maxCalls: 1 } },
    { wait: 'the CPS token (cps 1)', trunk: { cps: 1 } },
  ])('waiting for $wait: the call placed fails `interrupted`, billed; the others fail `interrupted`, refunded; none dialled again', async ({ trunk }) => {
    // The first call is placed (the far end never answers); the other two are claimed and wait.
    uas = await startSippUas({ scenario: 'uas-no-response', calls: 3, maxLifetimeMs: 40_000, vars: { hold_ms: 25_000 } });
    cluster = await engineCluster({
      ...FAST_RECOVERY,
      worker: { ...FAST_RECOVERY.worker, maxStalledCount: 1 },
      sip: { timers: { t1Ms: 500, t2Ms: 4000, t4Ms: 5000 }, trunks: [{ name: 'sipp', uri: uas.uri, ...trunk }] },
    });
    await cluster.start('api');
    const first = await cluster.start('worker');
    const account = await cluster.account(1);
    const ids = new Map<string, string>();
    for (const phone of ['+447700900351', '+447700900352', '+447700900353']) {
      const r = await http(`${cluster.httpUrl}/v1/verify`, { auth: account.auth, body: { phone_number: phone, method: 'flash_call' } });
      expect(r.status).toBe(201);
      ids.set(String(r.body.request_id), phone);
    }
    await waitFor(async () => invitesPerDestination(uas!.messages()).size === 1, 15_000, 10);
    await waitFor(async () => {
      const dials = await Promise.all([...ids.keys()].map((id) => cluster!.redis.hget(cluster!.keys.verification(id), 'dial_started')));
      return dials.every((d) => d !== null) ? true : undefined;
    }, 5000, 20);
    first.kill('SIGKILL');
    await first.waitExit(5000);
    expect(invitesPerDestination(uas.messages()).size).toBe(1);

    const second = await cluster.start('worker');
    const records = await settled(cluster, ids, 20_000);
    const [dialled] = [...invitesPerDestination(uas.messages()).keys()];
    for (const [id, r] of records) {
      const placed = dialled !== undefined && ids.get(id)!.endsWith(dialled.replace(/^\+/, ''));
      expect([id, r.status, r.failure_reason, Number(r.cost)]).toEqual([id, 'failed', 'interrupted', placed ? 4000 : 0]);
    }
    expect(second.output()).toContain('ended before placing its call');
    // Only the call that was placed was billed; no number dialled twice.
    expect(await cluster.redis.hget(cluster.keys.account(account.account_id), 'balance')).toBe(String(1_000_000 - 4000));
    const invites = invitesPerDestination(uas.messages());
    expect(invites.size).toBe(1);
    for (const [user, n] of invites) expect([user, n.size]).toEqual([user, 1]);
  });
});

describe('a delivery job that fails for good', { timeout: 60_000 }, () => {
  it('fails its verification `job_failed` instead of leaving it `sent` until it expires; status and webhook follow', async () => {
    // The account's webhook receiver, on loopback (webhooks.allowPrivate).
    const receiver = new Receiver();
    const hookUrl = await receiver.start();
    try {
      uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 1, maxLifetimeMs: 30_000 });
      cluster = await engineCluster({ ...FAST_RECOVERY, webhooks: { allowPrivate: true }, sip: { trunks: [{ name: 'sipp', uri: uas.uri }] } });
      await cluster.start('api');
      // A first worker run creates the events' consumer groups (the webhook group starts at new events only), then stops.
      const first = await cluster.start('worker');
      first.kill('SIGTERM');
      expect((await first.waitExit(10_000)).code).toBe(0);
      const account = await cluster.account(10);
      await cluster.redis.hset(cluster.keys.account(account.account_id), 'webhook_url', hookUrl);
      const r = await http(`${cluster.httpUrl}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900500', method: 'flash_call' } });
      expect(r.status).toBe(201);
      const id = String(r.body.request_id);
      // A record the job cannot open (its sealed code damaged): processing throws, and the job has one attempt.
      await cluster.redis.hset(cluster.keys.verification(id), 'code_enc', 'damaged');
      const worker = await cluster.start('worker');

      const status = await waitFor(async () => {
        const s = await http(`${cluster!.httpUrl}/v1/verify/${id}`, { auth: account.auth });
        return s.body.status === 'failed' ? s.body : undefined;
      }, 15_000, 100).catch((err: Error) => {
        throw new Error(`${err.message}; worker log:\n${worker.output().slice(-4000)}`);
      });
      expect(status).toMatchObject({ status: 'failed', failure_reason: 'job_failed' });
      expect(worker.output()).toContain('flash job failed');
      expect(uas.messages()).toHaveLength(0);
      const hooks = () => receiver.received.map((r) => r.json);
      const hook = await waitFor(async () => hooks().find((h) => h.event === 'verification.failed'), 15_000, 100).catch((err: Error) => {
        throw new Error(`${err.message}; received ${JSON.stringify(hooks())}; worker log:\n${worker.output().split('\n').filter((l) => /webhook/i.test(l)).join('\n')}`);
      });
      expect(hook).toMatchObject({ request_id: id, status: 'failed', method: 'flash_call' });
    } finally {
      await receiver.stop();
    }
  });
});
