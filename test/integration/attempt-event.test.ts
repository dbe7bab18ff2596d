import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { EventPublisher } from '../../src/events/event-publisher.js';
import { orderMember } from '../../src/events/webhook-queue.js';
import { Keys } from '../../src/store/keys.js';
import { deletePrefix, REDIS_URL } from '../helpers/engine.js';

/**
 * A flash call's `delivered` event and its `rang_at` mark in one script
 * (recordAttemptEvent-3, EventPublisher.write), against the real Redis: the
 * event is always written; the mark only on the request's current attempt,
 * as recordAttemptFields-1 does; the event is filed in the request's webhook
 * order set only when its record says the set exists (`whq_until`).
 */
describe('EventPublisher.write (real Redis)', () => {
  const redis = new Redis(REDIS_URL);
  const keys = new Keys(`fvattempt-${randomBytes(4).toString('hex')}`);
  const publisher = new EventPublisher(redis, keys, 10_000);
  afterAll(async () => {
    await deletePrefix(redis, keys.prefix);
    await redis.quit();
  });
  const eventsFor = async (id: string) =>
    (await redis.xrange(keys.events(), '-', '+'))
      .map(([, f]) => Object.fromEntries(f.flatMap((v, i) => (i % 2 === 0 ? [[v, f[i + 1]]] : []))) as Record<string, string>)
      .filter((e) => e.request_id === id);
  const delivered = (id: string, step?: number) => ({
    request_id: id,
    account_id: 'acct-1',
    method: 'flash_call' as const,
    status: 'delivered' as const,
    ...(step === undefined ? {} : { step, steps: 2 }),
    detail: { sip_status: 180, call_id: 'c-1', trunk: 't', range: '4470' },
  });

  it('writes the event, then the fields on the current attempt', async () => {
    const key = keys.verification('r1');
    await redis.hset(key, { account_id: 'acct-1', status: 'sent' });
    expect((await publisher.write(delivered('r1'), { rang_at: '1234' })).fieldsWritten).toBe(true);
    expect(await redis.hget(key, 'rang_at')).toBe('1234');
    const [e] = await eventsFor('r1');
    expect(e).toMatchObject({ event: 'verification.delivered', status: 'delivered', account_id: 'acct-1', method: 'flash_call' });
    expect(JSON.parse(e!.detail!)).toEqual({ sip_status: 180, call_id: 'c-1', trunk: 't', range: '4470' });
  });

  it('written once when the script runs twice (ioredis sends it again after a reconnect lost its reply): one entry, one id, one order member', async () => {
    const key = keys.verification('r9');
    await redis.hset(key, { account_id: 'acct-1', status: 'sent', whq_until: String(Date.now() + 60_000) });
    // The script's reply lost and the very same command sent again, as ioredis does with autoResendUnfulfilledCommands.
    const resent = new Proxy(redis, {
      get(target, prop, receiver) {
        if (prop === 'evalsha') {
          return async (...args: unknown[]) => {
            await (target.evalsha as (...a: unknown[]) => Promise<unknown>)(...args);
            return (target.evalsha as (...a: unknown[]) => Promise<unknown>)(...args);
          };
        }
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const { id } = await new EventPublisher(resent, keys, 10_000).write(delivered('r9'), { rang_at: '7' });
    const entries = (await redis.xrange(keys.events(), '-', '+')).filter(([, f]) => f.includes('r9'));
    expect(entries.map(([entryId]) => entryId)).toEqual([id]);
    expect(await redis.zrange(keys.webhookOrder('r9'), 0, -1)).toEqual([orderMember(id)]);
    expect(await redis.hget(key, 'rang_at')).toBe('7');
    // The next event of the request is written as usual.
    await publisher.write(delivered('r9'));
    expect((await eventsFor('r9')).length).toBe(2);
  });

  it('a call of a workflow step that is over: the event is written, the next step\'s fields are left alone', async () => {
    const key = keys.verification('r2');
    await redis.hset(key, { account_id: 'acct-1', wf_step: '1', wf_steps: '2' });
    expect((await publisher.write(delivered('r2', 0), { rang_at: '99' })).fieldsWritten).toBe(false);
    expect(await redis.hget(key, 'rang_at')).toBeNull();
    expect((await eventsFor('r2')).map((e) => [e.status, e.step, e.steps])).toEqual([['delivered', '0', '2']]);
    // Its own step: written.
    expect((await publisher.write(delivered('r2', 1), { rang_at: '100' })).fieldsWritten).toBe(true);
    expect(await redis.hget(key, 'rang_at')).toBe('100');
  });

  it('files the event in the webhook order set while the record says so, and never creates a set without a TTL', async () => {
    const key = keys.verification('r4');
    await redis.hset(key, { account_id: 'acct-1', status: 'sent', whq_until: String(Date.now() + 60_000) });
    await redis.zadd(keys.webhookOrder('r4'), 1, 'older');
    await redis.expire(keys.webhookOrder('r4'), 600);
    const { id } = await publisher.write(delivered('r4'));
    expect(await redis.zscore(keys.webhookOrder('r4'), orderMember(id))).toBe('-1');
    // A record created before order sets (no whq_until), or an event after its whq_until: not filed, no set made.
    await redis.hset(keys.verification('r5'), { account_id: 'acct-1', status: 'sent' });
    await redis.hset(keys.verification('r6'), { account_id: 'acct-1', status: 'sent', whq_until: String(Date.now() - 1000) });
    await publisher.write(delivered('r5'));
    await publisher.write(delivered('r6'));
    expect(await redis.exists(keys.webhookOrder('r5'), keys.webhookOrder('r6'))).toBe(0);
  });

  it('a record that is gone gets no fields (the event is written, as a plain publish would have been)', async () => {
    expect((await publisher.write(delivered('r3'), { rang_at: '5' })).fieldsWritten).toBe(false);
    expect(await redis.exists(keys.verification('r3'))).toBe(0);
    expect(await eventsFor('r3')).toHaveLength(1);
  });
});
