import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { VerificationService, type DeliveryQueue } from '../../src/verification/verification-service.js';
import { REDIS_URL, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
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
