import type { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Method } from '../../src/verification/types.js';
import { VerificationService } from '../../src/verification/verification-service.js';
import { readEvents, startTestEngine, testConfig, type TestEngine } from '../helpers/engine.js';

/**
 * POST /v1/verify when the job cannot be queued (Redis went away between the create and the enqueue): either the
 * request is failed and refunded (503, "not charged", its end written to the events stream as its `sent` was), or,
 * when that too fails, it exists, charged, and the reconciler queues it: the client gets its 201 and request id
 * rather than a 503 that would have it send (and pay for) another.
 */
describe('create: the enqueue fails', () => {
  let t: TestEngine;
  const silent = pino({ level: 'silent' });
  /** Once set, every Lua script through `flaky` fails (as a Redis gone mid-request would). */
  let scriptsDown = false;
  let flaky: Redis;

  beforeAll(async () => {
    t = await startTestEngine(testConfig({}), 'api');
    flaky = new Proxy(t.redis, {
      get(target, prop, receiver) {
        if ((prop === 'evalsha' || prop === 'eval') && scriptsDown) return () => Promise.reject(new Error('Connection is closed.'));
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  });
  afterAll(async () => {
    await t?.stop();
  });

  const service = (enqueue: () => Promise<void>) =>
    new VerificationService(flaky, t.keys, t.sealer, t.config, { enqueue }, silent, new Set<Method>(['flash_call']));
  const balance = async (accountId: string) => Number(await t.redis.hget(t.keys.account(accountId), 'balance'));

  it('refunded: 503 not charged, the record failed enqueue_failed, and a verification.failed event after its sent', async () => {
    const account = await t.account({ balance: 1 });
    const before = await balance(account.account_id);
    const err = await service(() => Promise.reject(new Error('Connection is closed.')))
      .create(account, { phone_number: '+447700900501' })
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 503, code: 'service_unavailable', message: 'could not queue the verification; it was not charged' });
    expect(await balance(account.account_id)).toBe(before);
    const events = (await readEvents(t.redis, t.keys)).filter((e) => e.account_id === account.account_id);
    expect(events.map((e) => e.status)).toEqual(['sent', 'failed']);
    expect(JSON.parse(events[1]!.detail!)).toMatchObject({ reason: 'enqueue_failed' });
    const id = events[0]!.request_id!;
    expect(await t.redis.hmget(t.keys.verification(id), 'status', 'failure_reason')).toEqual(['failed', 'enqueue_failed']);
    expect(await t.redis.zscore(t.keys.unqueued(), id)).toBeNull();
  });

  it('neither queued nor refunded: 201 with its request id, charged, left for the reconciler to queue', async () => {
    const account = await t.account({ balance: 1 });
    const before = await balance(account.account_id);
    const created = await service(async () => {
      scriptsDown = true;
      throw new Error('Connection is closed.');
    })
      .create(account, { phone_number: '+447700900502' })
      .finally(() => (scriptsDown = false));
    expect(created).toMatchObject({ status: 'sent', phone_number: '+447700900502', method: 'flash_call' });
    const id = created.request_id;
    expect(await t.redis.hget(t.keys.verification(id), 'status')).toBe('sent');
    expect(await balance(account.account_id)).toBeLessThan(before);
    // The reconciler's list: it queues the request (same job id) after worker.requeueAfterMs.
    expect(await t.redis.zscore(t.keys.unqueued(), id)).not.toBeNull();
  });
});
