import { performance } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { WebhookBreaker, type WebhookGate } from '../../src/events/webhook-breaker.js';
import { Keys } from '../../src/store/keys.js';
import { deletePrefix, REDIS_URL, testConfig } from '../helpers/engine.js';

/** The breaker's count "in a row" with deliveries running side by side, on the test Redis. */
describe('webhook breaker: failures in a row', () => {
  const prefix = testConfig().redis.prefix;
  const keys = new Keys(prefix);
  const redis = new Redis(REDIS_URL);
  afterAll(async () => {
    await deletePrefix(redis, prefix);
    redis.disconnect();
  });
  const breaker = new WebhookBreaker(redis, keys, { failures: 3, coolOffMs: 60_000, maxCoolOffMs: 60_000 }, 10_000, pino({ level: 'silent' }));
  const gate = (failing: boolean): WebhookGate => ({ url: 'http://127.0.0.1:9/', state: 'closed', until: 0, failing, readAt: performance.now() });

  it('a success read before failures of deliveries beside it, and done after them, resets them: 500, 200, 500, 200 ... never opens it', async () => {
    const account = 'acct-alternating';
    for (let i = 0; i < 5; i++) {
      // Two deliveries at once: both read the gate with nothing on record; one fails, then the other succeeds.
      const ok = gate(false);
      await breaker.failed(account, false, 'receiver answered HTTP 500');
      await breaker.succeeded(account, ok);
    }
    expect(await redis.hgetall(keys.webhookBreaker(account))).toEqual({});
    expect(await redis.sismember(keys.webhookBreakersOpen(), account)).toBe(0);
  });

  it('failures with no success between them still open it at the threshold; a success read before them all but done first does not hide them', async () => {
    const account = 'acct-down';
    const early = gate(false);
    await breaker.succeeded(account, early); // done before any failure: nothing to reset, no round trip
    for (let i = 0; i < 3; i++) await breaker.failed(account, false, 'receiver answered HTTP 503');
    expect(Number(await redis.hget(keys.webhookBreaker(account), 'open_until'))).toBeGreaterThan(Date.now());
    expect(await redis.sismember(keys.webhookBreakersOpen(), account)).toBe(1);
  });
});
