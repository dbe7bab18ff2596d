import { Job } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { AccountStore, type CreatedAccount } from '../../src/accounts/account-store.js';
import type { Config } from '../../src/config/schema.js';
import { Sealer } from '../../src/crypto/sealer.js';
import { claimDelivery, failStrandedDelivery } from '../../src/engine/delivery-claim.js';
import { BullDeliveryQueue } from '../../src/engine/queues.js';
import { EventPublisher } from '../../src/events/event-publisher.js';
import { Keys } from '../../src/store/keys.js';
import { connectBullRedis } from '../../src/store/redis.js';
import { FraudControls } from '../../src/verification/fraud-controls.js';
import { resendJobId } from '../../src/verification/resend.js';
import { utcDay, type Method } from '../../src/verification/types.js';
import { stepJobId } from '../../src/verification/workflow.js';
import { VerificationService, type DeliveryQueue } from '../../src/verification/verification-service.js';
import { REDIS_URL, deletePrefix, readEvents, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { startServiceOnRedis } from '../helpers/service-on-redis.js';
import { startSippUas, type SippUas } from '../helpers/sipp.js';

/**
 * A delivery job belongs to one send of its request (job id `<request_id>` for the first, `<request_id>-r<n>` for
 * the n-th). A resend whose add timed out is taken back (undoResend-4: the record goes back to the previous send,
 * the resend is refunded), but the add may have landed: its job then waits in the queue and a worker claims it
 * later, against the previous send's state. Here the api side (VerificationService) runs on the test Redis with the
 * real BullMQ queue, and a worker-role engine, started afterwards, runs the job with a SIPp far end as its trunk: the
 * job of a send the record is no longer at must do nothing (no dial, no event, no refund) and say so in the log.
 */
let rig: Rig | undefined;
afterEach(async () => {
  await rig?.stop();
  rig = undefined;
});

interface Rig {
  config: Readonly<Config>;
  keys: Keys;
  redis: Redis;
  uas: SippUas;
  account: CreatedAccount;
  queue: BullDeliveryQueue;
  /** The api's service; its resends go through `resendQueue`. */
  service(resendQueue: DeliveryQueue): VerificationService;
  /** The worker-role engine, once started. */
  worker?: TestEngine;
  startWorker(): Promise<TestEngine>;
  /** Waits until the job has run to its end and returns its final state. */
  finished(method: Method, jobId: string): Promise<string>;
  stop(): Promise<void>;
}

async function startRig(): Promise<Rig> {
  const uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 1, maxLifetimeMs: 60_000 });
  const config = testConfig({
    api: { defaultRateLimitPerSecond: 1000 },
    flash: { ringMs: 300, ringingTimeoutMs: 1500 },
    sip: { timers: { t1Ms: 50, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] },
    // No expiry sweep while a test runs: a request past its expiry stays `sent`, as when the sweeper is behind.
    verification: { expirySweepMs: 600_000 },
  });
  const keys = new Keys(config.redis.prefix);
  const sealer = new Sealer(Buffer.from(config.security.masterKey, 'hex'));
  const logger = pino({ level: 'silent' });
  const redis = new Redis(REDIS_URL);
  const bull = connectBullRedis(REDIS_URL);
  const queue = new BullDeliveryQueue(bull, keys.bullPrefix());
  const fraud = new FraudControls({ redis, keys, sealer, config, events: { publish: async () => '0-0' }, logger });
  const account = await new AccountStore(redis, keys, sealer).create({ name: 'x', balance: 10, currency: 'GBP', active: true });
  const r: Rig = {
    config,
    keys,
    redis,
    uas,
    account,
    queue,
    service: (resendQueue) =>
      new VerificationService(
        redis,
        keys,
        sealer,
        config,
        // The first send's job is not queued: it ran and finished long ago (the tests write its outcome by hand).
        { enqueue: (method, id, jobId) => (jobId === undefined ? Promise.resolve() : resendQueue.enqueue(method, id, jobId)) },
        logger,
        new Set<Method>(['flash_call']),
        fraud,
      ),
    async startWorker() {
      r.worker = await startTestEngine(config, 'worker');
      return r.worker;
    },
    async finished(method, jobId) {
      const q = queue.queue(method);
      return waitFor(async () => {
        const state = await (await Job.fromId(q, jobId))?.getState();
        return state === 'completed' || state === 'failed' ? state : undefined;
      }, 15_000);
    },
    async stop() {
      await r.worker?.stop();
      await uas.stop();
      await fraud.counters.close();
      await queue.close();
      await deletePrefix(redis, config.redis.prefix);
      await Promise.all([redis.quit(), bull.quit()]);
    },
  };
  return r;
}

/** What the api's add of a resend's job did: it reached Redis, then the caller gave up waiting for the answer. */
const landedThenTimedOut = (queue: BullDeliveryQueue): DeliveryQueue => ({
  enqueue: async (method, id, jobId) => {
    await queue.enqueue(method, id, jobId);
    throw new Error('queue unavailable: Redis did not answer');
  },
});

/** Everything a stray job could change: the record, the money, the day's usage and conversion counts, the events. */
async function snapshot(r: Rig, id: string) {
  const day = utcDay(Date.now());
  return {
    record: await r.redis.hgetall(r.keys.verification(id)),
    balance: await r.redis.hget(r.keys.account(r.account.account_id), 'balance'),
    usage: await r.redis.hgetall(r.keys.usage(r.account.account_id, day)),
    conversion: await r.redis.hgetall(r.keys.conversion(day)),
    events: (await readEvents(r.redis, r.keys)).filter((e) => e.request_id === id),
  };
}

/** Log lines of the worker engine for one request. */
const logsOf = (t: TestEngine, id: string) =>
  t.logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.request_id === id);

const DROPPED = /delivery job of a send the verification is no longer at/;

describe('the job of a resend taken back after its add landed', { timeout: 60_000 }, () => {
  it.each([
    {
      // The old claim found the previous send's dial and, past the expiry, published a refunded failure for it:
      // the first call, which rang, was given back.
      title: 'past the expiry, with the previous send rang (its `delivered` not applied yet): no refunded failure of the previous send',
      previous: { outcome: 'cancelled', rang: true },
      expired: true,
    },
    {
      // The old claim found the previous send's dial, answered without an 18x (no rang_at): `interrupted`, a failure
      // of a call that showed the code.
      title: 'with the previous send answered: no `interrupted` failure of the previous send',
      previous: { outcome: 'answered', rang: false },
      expired: false,
    },
  ])('$title', async ({ previous, expired }) => {
    rig = await startRig();
    const r = rig;
    const api = r.service(landedThenTimedOut(r.queue));
    const created = await api.create(r.account, { phone_number: '+447700900610' });
    const id = created.request_id;
    const key = r.keys.verification(id);
    // As the flash worker left the first send: dialled, its call over (status still `sent`: its event not applied yet).
    const dialled = Date.now();
    await r.redis.hset(key, { dial_started: String(dialled), outcome: previous.outcome, ...(previous.rang ? { rang_at: String(dialled + 500) } : {}) });

    await expect(api.create(r.account, { phone_number: '+447700900610', resend: true })).rejects.toMatchObject({ code: 'service_unavailable' });
    // Taken back: the record is at the first send again, and the resend's job is in the queue all the same.
    const jobId = resendJobId(id, 2);
    expect(await r.redis.hget(key, 'sends')).toBeNull();
    expect(await (await Job.fromId(r.queue.queue('flash_call'), jobId))?.getState()).toBe('waiting');
    // The job waited in a backlog, maybe past the request's expiry.
    if (expired) await r.redis.hset(key, 'expires_at', String(Date.now() - 1000));
    const before = await snapshot(r, id);

    const worker = await r.startWorker();
    expect(await r.finished('flash_call', jobId)).toBe('completed');
    // Time for the worker's status consumer to apply anything the job might have published.
    await new Promise((res) => setTimeout(res, 500));
    expect(await snapshot(r, id)).toEqual(before);
    expect(r.uas.requests('INVITE')).toHaveLength(0);
    const dropped = logsOf(worker, id).find((l) => DROPPED.test(String(l.msg)));
    expect(dropped).toMatchObject({ job_id: jobId, job_send: 2, current_send: 1 });
  });
});

describe('the first send job run once a resend is under way', { timeout: 60_000 }, () => {
  it('does not take the resend\'s claim (it would dial for the resend\'s job); the resend\'s own job dials, once', async () => {
    rig = await startRig();
    const r = rig;
    // The resend's job is added only when the test says so: it is behind a backlog.
    let addResendJob: (() => Promise<void>) | undefined;
    const api = r.service({
      enqueue: async (method, id, jobId) => {
        addResendJob = () => r.queue.enqueue(method, id, jobId);
      },
    });
    const created = await api.create(r.account, { phone_number: '+447700900611' });
    const id = created.request_id;
    const key = r.keys.verification(id);
    await r.redis.hset(key, { dial_started: String(Date.now()), rang_at: String(Date.now() + 500), outcome: 'cancelled', status: 'delivered' });
    expect(await api.create(r.account, { phone_number: '+447700900611', resend: true })).toMatchObject({ request_id: id, sends: 2 });
    expect(await r.redis.hget(key, 'dial_started')).toBeNull();

    // The first send's job (job id = request id) runs again: added by hand, or run again after its worker stalled.
    await r.queue.enqueue('flash_call', id);
    const before = await snapshot(r, id);
    const worker = await r.startWorker();
    expect(await r.finished('flash_call', id)).toBe('completed');
    await new Promise((res) => setTimeout(res, 500));
    expect(r.uas.requests('INVITE')).toHaveLength(0);
    expect(await snapshot(r, id)).toEqual(before);
    expect(logsOf(worker, id).find((l) => DROPPED.test(String(l.msg)))).toMatchObject({ job_id: id, job_send: 1, current_send: 2 });

    // The resend's own job delivers it: one call in all.
    await addResendJob!();
    expect(await r.finished('flash_call', resendJobId(id, 2))).toBe('completed');
    await waitFor(async () => (await r.redis.hget(key, 'outcome')) === 'cancelled', 10_000);
    expect(r.uas.requests('INVITE')).toHaveLength(1);
  });
});

describe('a delivery job of another send that fails for good (it threw, or stalled too often)', () => {
  it('fails nothing: the record is at another job\'s send; a job of the current send still fails its request', async () => {
    const s = await startServiceOnRedis(['flash_call']);
    try {
      const { request_id: id } = await s.service.create(s.account, { phone_number: '+447700900612' });
      // Its call placed (the dial mark of its job, the first send's: the request id): billed when failed.
      await s.redis.hset(s.keys.verification(id), 'dial_started', String(Date.now()), 'dial_job', id);
      const deps = { redis: s.redis, keys: s.keys, events: new EventPublisher(s.redis, s.keys, 1000) };
      expect(await failStrandedDelivery(deps, { requestId: id, jobId: resendJobId(id, 2) }, 'flash_call', 'job_stalled')).toBe(false);
      expect((await readEvents(s.redis, s.keys)).filter((e) => e.request_id === id && e.status === 'failed')).toEqual([]);
      expect(await failStrandedDelivery(deps, { requestId: id, jobId: id }, 'flash_call', 'job_stalled')).toBe(true);
      const failed = (await readEvents(s.redis, s.keys)).filter((e) => e.request_id === id && e.status === 'failed');
      expect(failed.map((e) => JSON.parse(e.detail!) as unknown)).toEqual([{ reason: 'job_stalled', refund: false }]);
      // Claimed, but its job failed before its call could leave (no dial mark): refunded.
      const { request_id: other } = await s.service.create(s.account, { phone_number: '+447700900613' });
      await s.redis.hset(s.keys.verification(other), 'dial_started', String(Date.now()));
      expect(await failStrandedDelivery(deps, { requestId: other, jobId: other }, 'flash_call', 'job_failed')).toBe(true);
      const unsent = (await readEvents(s.redis, s.keys)).filter((e) => e.request_id === other && e.status === 'failed');
      expect(unsent.map((e) => JSON.parse(e.detail!) as unknown)).toEqual([{ reason: 'job_failed', refund: true }]);
    } finally {
      await s.stop();
    }
  });
});

describe('a workflow step\'s job run again after the workflow moved on (it stalled, or was added by hand)', () => {
  it('claims nothing at a later step of the same method, and fails nothing; the later step\'s own job claims it', async () => {
    const s = await startServiceOnRedis(['sms', 'voice']);
    try {
      const workflow = [{ method: 'sms', timeout_seconds: 20 }, { method: 'voice', timeout_seconds: 20 }, { method: 'sms' }];
      const { request_id: id } = await s.service.create(s.account, { phone_number: '+447700900613', workflow });
      const key = s.keys.verification(id);
      // As advanceWorkflow-8 leaves it at step 2: the step's method, no dial yet.
      await s.redis.hset(key, { wf_step: '2', method: 'sms' });
      await s.redis.hdel(key, 'dial_started');
      const deps = { redis: s.redis, keys: s.keys, sealer: s.sealer, events: new EventPublisher(s.redis, s.keys, 1000), logger: s.logger };

      // Step 0's job (job id = request id): same method, but not its step.
      expect(await claimDelivery(deps, { requestId: id, jobId: id }, 'sms')).toBeUndefined();
      expect(await s.redis.hget(key, 'dial_started')).toBeNull();
      expect(await failStrandedDelivery(deps, { requestId: id, jobId: id }, 'sms', 'job_stalled')).toBe(false);
      expect((await readEvents(s.redis, s.keys)).filter((e) => e.request_id === id && e.status === 'failed')).toEqual([]);
      // Step 2's own job.
      expect((await claimDelivery(deps, { requestId: id, jobId: stepJobId(id, 2) }, 'sms'))?.base).toMatchObject({ request_id: id, method: 'sms', step: 2 });
      expect(await s.redis.hget(key, 'dial_started')).not.toBeNull();
    } finally {
      await s.stop();
    }
  });
});

describe('a resend after one taken back whose job had landed and ran', { timeout: 60_000 }, () => {
  it('goes out: the new resend has the taken-back one\'s job id, and that finished job does not swallow its add', async () => {
    rig = await startRig();
    const r = rig;
    const created = await r.service(r.queue).create(r.account, { phone_number: '+447700900614' });
    const id = created.request_id;
    const key = r.keys.verification(id);
    await r.redis.hset(key, { dial_started: String(Date.now()), rang_at: String(Date.now() + 500), outcome: 'cancelled', status: 'delivered' });

    // Taken back after its add landed; its job runs and is dropped.
    await expect(r.service(landedThenTimedOut(r.queue)).create(r.account, { phone_number: '+447700900614', resend: true })).rejects.toMatchObject({ code: 'service_unavailable' });
    await r.startWorker();
    expect(await r.finished('flash_call', resendJobId(id, 2))).toBe('completed');
    expect(r.uas.requests('INVITE')).toHaveLength(0);

    // The next resend is send 2 again, with the same job id: it is delivered.
    expect(await r.service(r.queue).create(r.account, { phone_number: '+447700900614', resend: true })).toMatchObject({ request_id: id, sends: 2 });
    await waitFor(async () => r.uas.requests('INVITE').length === 1, 15_000);
    await waitFor(async () => (await r.redis.hget(key, 'dial_started')) !== null && (await r.redis.hget(key, 'outcome')) === 'cancelled', 15_000);
  });
});
