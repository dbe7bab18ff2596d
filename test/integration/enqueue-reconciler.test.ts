import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { AccountStore, type Account } from '../../src/accounts/account-store.js';
import { Sealer } from '../../src/crypto/sealer.js';
import { BullDeliveryQueue } from '../../src/engine/queues.js';
import { Metrics } from '../../src/metrics/metrics.js';
import { Keys } from '../../src/store/keys.js';
import { connectBullRedis } from '../../src/store/redis.js';
import { EnqueueReconciler } from '../../src/verification/enqueue-reconciler.js';
import { ExpirySweeper } from '../../src/verification/expiry-sweeper.js';
import { FraudControls } from '../../src/verification/fraud-controls.js';
import type { Method } from '../../src/verification/types.js';
import { VerificationService, type DeliveryQueue } from '../../src/verification/verification-service.js';
import { REDIS_URL, deletePrefix, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { invitesPerDestination } from '../helpers/engine-process.js';
import { startSippUas, type SippUas } from '../helpers/sipp.js';
import { monitorRedis } from '../helpers/redis-monitor.js';

/**
 * An api process that dies between the create script (the request is stored
 * and paid for) and `queue.add` leaves a `sent` request with no job. The
 * worker's reconciler finds it after `worker.requeueAfterMs` and queues it
 * (job id = request id): the number is called once, the request delivered.
 */
let engine: TestEngine | undefined;
let uas: SippUas | undefined;
afterEach(async () => {
  await uas?.stop();
  await engine?.stop();
  engine = uas = undefined;
});

describe('a verification created but never queued', () => {
  it('is queued by the reconciler and delivered, once', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 1, maxLifetimeMs: 30_000 });
    engine = await startTestEngine(
      testConfig({
        flash: { ringMs: 200 },
        worker: { requeueAfterMs: 500 },
        sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] },
      }),
    );
    const account = await engine.account();
    // The "api process" whose queue call never returns: it died right after the create script.
    let enqueueCalled = false;
    const dying: DeliveryQueue = {
      enqueue: () => {
        enqueueCalled = true;
        return new Promise<void>(() => undefined);
      },
    };
    const service = new VerificationService(
      engine.redis,
      engine.keys,
      engine.sealer,
      engine.config,
      dying,
      pino({ level: 'silent' }),
      new Set(['flash_call'] as const),
    );
    void service.create(await engine.accounts.get(account.account_id), { phone_number: '+447700900555', method: 'flash_call' });
    await waitFor(async () => enqueueCalled);
    const [id] = await engine.redis.zrange(engine.keys.unqueued(), '0', '-1');
    expect(id).toBeDefined();
    expect(await engine.redis.hget(engine.keys.verification(id!), 'status')).toBe('sent');

    const record = await waitFor(async () => {
      const h = await engine!.redis.hgetall(engine!.keys.verification(id!));
      return h.status === 'delivered' ? h : undefined;
    }, 15_000);
    expect(record.dial_started).toBeTruthy();
    expect([...invitesPerDestination(uas.messages()).entries()].map(([u, c]) => [u, c.size])).toEqual([['+447700900555', 1]]);
    expect(engine.logs.join('\n')).toContain('was never queued');
    // The intent is gone once handled; a later pass finds nothing to do.
    expect(await engine.redis.zcard(engine.keys.unqueued())).toBe(0);
  });

  it('a workflow whose api died before its step-0 timer: created whole, queued, and its timer added by the reconciler', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 2, maxLifetimeMs: 30_000 });
    engine = await startTestEngine(
      testConfig({
        flash: { ringMs: 200 },
        voice: { answerTimeoutMs: 20_000 },
        worker: { requeueAfterMs: 500 },
        verification: { minStepTimeoutSeconds: 1 },
        sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] },
      }),
    );
    const account = await engine.account();
    // The "api process" dies right after the create script: its step timer (added before the job) never returns.
    let timerCalled = false;
    const never = (): Promise<void> => new Promise<void>(() => undefined);
    const service = new VerificationService(
      engine.redis,
      engine.keys,
      engine.sealer,
      engine.config,
      { enqueue: never },
      pino({ level: 'silent' }),
      new Set(['flash_call', 'voice'] as const),
      undefined,
      {
        schedule: () => {
          timerCalled = true;
          return never();
        },
      },
    );
    void service.create(await engine.accounts.get(account.account_id), {
      phone_number: '+447700900558',
      workflow: [{ method: 'flash_call', timeout_seconds: 2 }, { method: 'voice' }],
    });
    await waitFor(async () => timerCalled);
    const [id] = await engine.redis.zrange(engine.keys.unqueued(), '0', '-1');
    // The workflow went in with the record, in the create script: it is a workflow at step 0, not a lone flash call.
    const created = await engine.redis.hgetall(engine.keys.verification(id!));
    expect([created.status, created.method, created.wf_step, created.wf_steps, created.att0_method, created.att0_status]).toEqual(['sent', 'flash_call', '0', '2', 'flash_call', 'sent']);
    expect(JSON.parse(created.wf!)).toMatchObject([{ method: 'flash_call', timeout_seconds: 2 }, { method: 'voice' }]);

    // The reconciler queues step 0 and adds its timer: the flash call rings, is not verified, and step 1 (voice) starts.
    const moved = await waitFor(async () => {
      const h = await engine!.redis.hgetall(engine!.keys.verification(id!));
      return h.wf_step === '1' ? h : undefined;
    }, 15_000);
    expect([moved.att0_status, moved.method]).toEqual(['timed_out', 'voice']);
    await waitFor(async () => invitesPerDestination(uas!.messages()).get('+447700900558')?.size === 2, 10_000);
    expect(engine.logs.join('\n')).toContain('was never queued');
  });

  it('a normal create leaves no intent behind, and a refused one neither', async () => {
    engine = await startTestEngine(testConfig({ worker: { requeueAfterMs: 60_000 } }), 'api');
    const account = await engine.account({ balance: 0.005 });
    const ok = await fetch(`${engine.url}/v1/verify`, {
      method: 'POST',
      headers: { authorization: account.auth, 'content-type': 'application/json' },
      body: JSON.stringify({ phone_number: '+447700900556' }),
    });
    expect(ok.status).toBe(201);
    const poor = await fetch(`${engine.url}/v1/verify`, {
      method: 'POST',
      headers: { authorization: account.auth, 'content-type': 'application/json' },
      body: JSON.stringify({ phone_number: '+447700900557' }),
    });
    expect(poor.status).toBe(402);
    expect(await engine.redis.zcard(engine.keys.unqueued())).toBe(0);
  });

  it('clears the intents of concurrent requests together: fewer ZREMs than requests, none left', async () => {
    engine = await startTestEngine(testConfig({ worker: { requeueAfterMs: 60_000 }, api: { defaultRateLimitPerSecond: 1000 } }), 'api');
    const account = await engine.account({ balance: 100 });
    const intentKey = engine.keys.unqueued();
    const zrems: number[] = [];
    const monitor = await monitorRedis(REDIS_URL, (args) => {
      if (args[0] === 'zrem' && args[1] === intentKey) zrems.push(args.length - 2);
    });
    try {
      const answers = await Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          fetch(`${engine!.url}/v1/verify`, {
            method: 'POST',
            headers: { authorization: account.auth, 'content-type': 'application/json' },
            body: JSON.stringify({ phone_number: `+4477009006${String(i).padStart(2, '0')}` }),
          }),
        ),
      );
      expect(answers.map((r) => r.status)).toEqual(Array(40).fill(201));
      await waitFor(async () => (await engine!.redis.zcard(intentKey)) === 0, 5_000);
      await waitFor(async () => zrems.reduce((a, b) => a + b, 0) === 40, 5_000);
      // Every intent removed exactly once, in fewer commands than requests.
      expect(zrems.length).toBeLessThan(40);
    } finally {
      monitor.disconnect();
    }
  });
});

/**
 * The per-country conversion `sent` of a request the reconciler queued: counted once, in the day it was charged,
 * under its country and method, whichever process added its job (the create script counts it with the charge:
 * countSent.lua), and a refund afterwards takes back exactly that count. In Prometheus
 * (`flashverify_conversion_sent_total`, per process) it is counted once too, by the process whose add queued it: the
 * api, or the reconciler that found no job. Real Redis and BullMQ; no worker runs, so a queued job stays waiting,
 * undialled, as in a backlog. The clock is Date's, faked (timers stay real), to put the charge and the reconciler's
 * pass on either side of midnight.
 */
describe('the conversion `sent` of a request the reconciler queued', () => {
  const TEST_NUMBER = '+447700900777';
  const config = testConfig({ fraud: { testNumbers: [{ number: TEST_NUMBER, code: '1234' }] } });
  const keys = new Keys(config.redis.prefix);
  const sealer = new Sealer(Buffer.from(config.security.masterKey, 'hex'));
  const logger = pino({ level: 'silent' });
  const REQUEUE_AFTER_MS = 1000;
  let redis: Redis;
  let bull: Redis;
  let queue: BullDeliveryQueue;
  let fraud: FraudControls;
  /** The api process's Prometheus counters (its FraudControls, `fraud`, counts there). */
  let apiMetrics: Metrics;
  let account: Account;

  beforeAll(async () => {
    redis = new Redis(REDIS_URL);
    bull = connectBullRedis(REDIS_URL);
    queue = new BullDeliveryQueue(bull, keys.bullPrefix());
    apiMetrics = new Metrics({ defaultMetrics: false });
    fraud = new FraudControls({ redis, keys, sealer, config, events: { publish: async () => '0-0' }, logger, metrics: apiMetrics });
    account = await new AccountStore(redis, keys, sealer).create({ name: 'x', balance: 10, currency: 'GBP', active: true });
  });
  afterEach(() => {
    vi.useRealTimers();
  });
  afterAll(async () => {
    await fraud.counters.close();
    await queue.close();
    await deletePrefix(redis, config.redis.prefix);
    await Promise.all([redis.quit(), bull.quit()]);
  });

  const at = (ms: number) => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(ms);
  };
  const service = (q: DeliveryQueue) =>
    new VerificationService(redis, keys, sealer, config, q, logger, new Set<Method>(['flash_call', 'voice', 'sms']), fraud);
  /** A worker process: its own Prometheus counters, and its FraudControls counting there (as main.ts wires them). */
  const worker = (publish: ConstructorParameters<typeof FraudControls>[0]['events']['publish'] = async () => '0-0') => {
    const metrics = new Metrics({ defaultMetrics: false });
    return { metrics, fraud: new FraudControls({ redis, keys, sealer, config, events: { publish }, logger, metrics, counters: fraud.counters }) };
  };
  /** One pass of a worker's reconciler, at the (faked) time of now; `w` the worker it runs in (a new one by default). */
  const reconcile = (w = worker()) =>
    new EnqueueReconciler(redis, keys, queue, { requeueAfterMs: REQUEUE_AFTER_MS, intervalMs: 60_000 }, logger, Date.now, undefined, w.fraud).reconcile();
  /** A process's flashverify_conversion_sent_total{country, method}. */
  const sentTotal = async (metrics: Metrics, country: string, method: Method) => {
    const text = await metrics.registry.getSingleMetricAsString('flashverify_conversion_sent_total');
    return Number(new RegExp(`^flashverify_conversion_sent_total\\{country="${country}",method="${method}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
  };
  const sent = async (day: string, country: string, method: Method) => (await fraud.conversion(day))[`country:${country}:${method}:sent`] ?? 0;
  const jobsOf = async (method: Method, id: string) => {
    const job = await queue.queue(method).getJob(id);
    return job ? [job.data] : [];
  };
  /**
   * POST /v1/verify on an api process that dies inside its queue call: before the add (`added: false`), or once the
   * add has landed (`added: true`), never returning; nothing after it runs (no count, no intent cleared).
   * Resolves with the request id once it has died.
   */
  const createOnDyingApi = async (phone: string, method: Method, added: boolean): Promise<string> => {
    let died!: (id: string) => void;
    const dead = new Promise<string>((resolve) => (died = resolve));
    const dying: DeliveryQueue = {
      enqueue: async (m, id, jobId) => {
        if (added) await queue.enqueue(m, id, jobId);
        died(id);
        return new Promise<void>(() => undefined);
      },
    };
    void service(dying).create(account, { phone_number: phone, method });
    return dead;
  };

  it('is counted once, in the day it was charged (not the day it was queued), under its country and method', async () => {
    at(Date.parse('2031-03-04T23:59:59Z'));
    const id = await createOnDyingApi('+33612345678', 'voice', false);
    expect(await jobsOf('voice', id)).toEqual([]);

    // The reconciler's pass comes after midnight: it queues the request.
    at(Date.parse('2031-03-05T00:00:05Z'));
    const w = worker();
    expect(await reconcile(w)).toEqual([id]);
    expect(await jobsOf('voice', id)).toEqual([{ request_id: id }]);
    expect(await sent('2031-03-04', 'FR', 'voice')).toBe(1);
    expect(await fraud.conversion('2031-03-05')).toEqual({});
    // In Prometheus, by the worker that queued it; the api died before queueing it, uncounted.
    expect([await sentTotal(w.metrics, 'FR', 'voice'), await sentTotal(apiMetrics, 'FR', 'voice')]).toEqual([1, 0]);
    // Its intent is gone: a later pass queues and counts nothing more.
    expect(await reconcile(w)).toEqual([]);
    expect(await sent('2031-03-04', 'FR', 'voice')).toBe(1);
    expect(await sentTotal(w.metrics, 'FR', 'voice')).toBe(1);
  });

  it('an api that added the job and died before anything else: the reconciler adds it again (one job), counted once', async () => {
    at(Date.parse('2031-04-01T12:00:00Z'));
    const id = await createOnDyingApi('+447700900701', 'sms', true);
    expect(await jobsOf('sms', id)).toEqual([{ request_id: id }]);
    at(Date.parse('2031-04-01T12:00:05Z'));
    const w = worker();
    expect(await reconcile(w)).toEqual([id]);
    expect(await queue.queue('sms').getJobCounts('waiting')).toEqual({ waiting: 1 });
    expect(await sent('2031-04-01', 'GB', 'sms')).toBe(1);
    // The api's add queued it (the reconciler found the job): not the reconciler's to count in Prometheus. The api
    // died before counting it, and its counters with it.
    expect(await sentTotal(w.metrics, 'GB', 'sms')).toBe(0);
  });

  it('a request queued and counted by the api, its intent left behind: the reconciler adds the job again and counts nothing more', async () => {
    at(Date.parse('2031-04-02T12:00:00Z'));
    const created = await service(queue).create(account, { phone_number: '+447700900702', method: 'flash_call' });
    const id = created.request_id;
    await waitFor(async () => (await redis.zscore(keys.unqueued(), id)) === null, 5_000);
    // The api's ZREM of the intent never happened (it died first): the intent is back as the create script filed it.
    await redis.zadd(keys.unqueued(), Date.now(), id);
    expect(await sent('2031-04-02', 'GB', 'flash_call')).toBe(1);

    at(Date.parse('2031-04-02T12:00:05Z'));
    // Still `sent` and undialled (its job waits in a backlog): the reconciler adds it, a no-op for BullMQ.
    const w = worker();
    expect(await reconcile(w)).toEqual([id]);
    expect(await jobsOf('flash_call', id)).toEqual([{ request_id: id }]);
    expect(await queue.queue('flash_call').getJobCounts('waiting')).toEqual({ waiting: 1 });
    expect(await sent('2031-04-02', 'GB', 'flash_call')).toBe(1);
    // In Prometheus by the api, which queued it; not again by the worker.
    expect([await sentTotal(apiMetrics, 'GB', 'flash_call'), await sentTotal(w.metrics, 'GB', 'flash_call')]).toEqual([1, 0]);
  });

  it('a test number whose api died before its simulated delivery: the reconciler delivers it, never queues a job (it would be dialled), counts nothing', async () => {
    at(Date.parse('2031-04-04T12:00:00Z'));
    let died!: (id: string) => void;
    const dead = new Promise<string>((resolve) => (died = resolve));
    // The api's events publisher: the process dies as it publishes the test number's delivery.
    const dying = worker(async (e) => {
      died(e.request_id);
      return new Promise<string>(() => undefined);
    });
    void new VerificationService(redis, keys, sealer, config, queue, logger, new Set<Method>(['flash_call']), dying.fraud).create(account, { phone_number: TEST_NUMBER, method: 'flash_call' });
    const id = await dead;

    at(Date.parse('2031-04-04T12:00:05Z'));
    const published: unknown[] = [];
    const w = worker(async (e) => {
      published.push(e);
      return '0-0';
    });
    expect(await reconcile(w)).toEqual([]);
    expect(published).toEqual([{ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'delivered', detail: { test_number: true } }]);
    expect(await jobsOf('flash_call', id)).toEqual([]);
    expect(await redis.zscore(keys.unqueued(), id)).toBeNull();
    expect(await sentTotal(w.metrics, 'GB', 'flash_call')).toBe(0);
  });

  it('two reconcilers queueing the same request at once: one job, counted in Prometheus by one of them', async () => {
    at(Date.parse('2031-04-03T12:00:00Z'));
    const id = await createOnDyingApi('+447700900705', 'voice', false);
    at(Date.parse('2031-04-03T12:00:05Z'));
    const [a, b] = [worker(), worker()];
    const passes = await Promise.all([reconcile(a), reconcile(b)]);
    expect(passes.flat()).toContain(id);
    expect(await jobsOf('voice', id)).toEqual([{ request_id: id }]);
    expect((await sentTotal(a.metrics, 'GB', 'voice')) + (await sentTotal(b.metrics, 'GB', 'voice'))).toBe(1);
    expect(await sent('2031-04-03', 'GB', 'voice')).toBe(1);
  });

  it('a refund after the reconciler queued it (a cancel, an expiry) leaves `sent` at 0, not below', async () => {
    const created = Date.parse('2031-05-01T12:00:00Z');
    at(created);
    const canceled = await createOnDyingApi('+447700900703', 'voice', false);
    const expired = await createOnDyingApi('+447700900704', 'voice', false);
    at(created + 5000);
    expect((await reconcile()).sort()).toEqual([canceled, expired].sort());
    expect(await sent('2031-05-01', 'GB', 'voice')).toBe(2);

    // Neither was dialled (no worker took its job): each is refunded, and its count taken back.
    expect((await service(queue).cancel(account, canceled)).status).toBe('canceled');
    expect(await sent('2031-05-01', 'GB', 'voice')).toBe(1);
    const past = created + (config.verification.defaultExpirySeconds + 1) * 1000;
    await new ExpirySweeper(redis, keys, { intervalMs: 60_000, eventsMaxLen: 1000 }, logger, () => past).sweep();
    expect(await redis.hmget(keys.verification(expired), 'status', 'refunded')).toEqual(['expired', '1']);
    expect(await sent('2031-05-01', 'GB', 'voice')).toBe(0);
  });
});
