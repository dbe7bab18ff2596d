import type { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { TrunkConfig } from '../../src/config/schema.js';
import { watchUnlessEnded } from '../../src/engine/attempt-state.js';
import { EventPublisher } from '../../src/events/event-publisher.js';
import { expireRequest } from '../../src/verification/expiry-sweeper.js';
import { http, readEvents, startTestEngine, testConfig, type TestEngine } from '../helpers/engine.js';

/**
 * A call that waited for its trunk finds its request past `expires_at`, not swept yet: it is not dialled, and the
 * request expires with the attempt refunded. Here the sweeper of another process expires the request in between (the
 * interleaving of two processes, made certain by running the sweep just before the call's own step): the attempt,
 * billed by that sweep (its claim was still there), is refunded all the same.
 */
let engine: TestEngine | undefined;
afterEach(async () => {
  await engine?.stop();
  engine = undefined;
});

const TRUNK: TrunkConfig = { name: 'none', uri: 'sip:127.0.0.1:9', cps: 10, ringOn183: false, dummySdp: false, headers: {} };

describe('a call past its request\'s expiry, the sweeper running meanwhile', () => {
  it('is not dialled and its attempt is refunded (a refunded failure), whichever expired the request', async () => {
    engine = await startTestEngine(testConfig({ sip: { trunks: [TRUNK] } }), 'api');
    const t = engine;
    const account = await t.account({ balance: 5 });
    const created = await http(`${t.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900441' } });
    expect(created.status).toBe(201);
    const id = String(created.body.request_id);
    const key = t.keys.verification(id);
    // Claimed by a worker (its dial mark not written: the call waits for its token), and past its expiry.
    const past = Date.now() - 1000;
    await t.redis.hset(key, 'dial_started', String(past), 'expires_at', String(past));
    await t.redis.zadd(t.keys.expiries(), past, id);
    // The other process's sweep lands just before this call takes its claim back.
    const racing = new Proxy(t.redis, {
      get(target, prop, receiver) {
        if (prop === 'hdel') {
          return async (...args: Parameters<Redis['hdel']>) => {
            expect(await expireRequest(target, t.keys, id, Date.now(), 1000)).toBe('expired');
            return target.hdel(...args);
          };
        }
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    }) as Redis;
    const watch = await watchUnlessEnded(
      { redis: racing, keys: t.keys, config: t.config, events: new EventPublisher(t.redis, t.keys, 1000), trunks: { report: () => undefined } },
      key,
      { request_id: id, account_id: account.account_id, method: 'flash_call' },
      TRUNK,
      past,
      pino({ level: 'silent' }),
    );
    expect(watch).toBeUndefined();
    expect(await t.redis.hget(key, 'status')).toBe('expired');
    // The sweep billed it (the claim was there); the refunded failure gives it back once (applyEvent-4).
    const failed = (await readEvents(t.redis, t.keys)).filter((e) => e.request_id === id && e.status === 'failed');
    expect(failed.map((e) => JSON.parse(e.detail!) as unknown)).toEqual([{ reason: 'request_ended', refund: true }]);
  });
});
