import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { AccountFieldCache, AccountFieldEntries, accountFields } from '../../src/accounts/account-field-cache.js';
import { AccountStore } from '../../src/accounts/account-store.js';
import { Sealer } from '../../src/crypto/sealer.js';
import { WebhookConsumer } from '../../src/events/webhook-consumer.js';
import type { WebhookJobData } from '../../src/events/webhook-queue.js';
import { Keys } from '../../src/store/keys.js';
import { FraudControls } from '../../src/verification/fraud-controls.js';
import { REDIS_URL, deletePrefix, testConfig } from '../helpers/engine.js';
import { monitorRedis, type RedisMonitor } from '../helpers/redis-monitor.js';

/**
 * The per-process account field cache against the real Redis: commands are
 * counted with MONITOR (only those on this test's unique keys), so a cache
 * that asked Redis anyway would fail here.
 */
describe('account field cache', () => {
  const config = testConfig({ accounts: { fieldCacheMs: 300 } });
  const keys = new Keys(config.redis.prefix);
  const sealer = new Sealer(Buffer.from(config.security.masterKey, 'hex'));
  let redis: Redis;
  let monitor: RedisMonitor | undefined;
  /** Commands on this test's keys that Redis executed, as MONITOR reports them (name lower-cased, then arguments). */
  const seen: string[][] = [];
  let entries: AccountFieldEntries;
  let clock = 0;

  beforeAll(async () => {
    redis = new Redis(REDIS_URL);
    // Only commands on this test's keys are kept (the shared Redis serves other tests and benchmarks too).
    monitor = await monitorRedis(REDIS_URL, (args) => {
      if (args.slice(1).some((a) => a.startsWith(`${config.redis.prefix}:`))) seen.push(args);
    });
    await settled();
  });
  afterAll(async () => {
    monitor?.disconnect();
    await deletePrefix(redis, config.redis.prefix);
    await redis.quit();
  });
  beforeEach(() => {
    entries = new AccountFieldEntries();
    clock = 1_000_000;
  });

  /** Resolves once MONITOR has shown everything Redis executed before it was called (a marker command, then waits for it). */
  async function settled(): Promise<void> {
    const marker = `${config.redis.prefix}:marker:${randomUUID()}`;
    await redis.exists(marker);
    // Generous: MONITOR streams every command of the shared Redis, and a loaded 2-core machine parses them slowly.
    const end = Date.now() + 20_000;
    while (!seen.some((c) => c[0] === 'exists' && c[1] === marker)) {
      if (Date.now() > end) throw new Error(`MONITOR did not show the marker within 20 s (${seen.length} commands seen)`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** HGETs of `field` of this account that Redis executed so far. */
  async function hgets(accountId: string, field: string): Promise<number> {
    await settled();
    return seen.filter((c) => c[0] === 'hget' && c[1] === keys.account(accountId) && c[2] === field).length;
  }

  async function account(fields: Record<string, string>): Promise<string> {
    const id = randomUUID();
    await redis.hset(keys.account(id), fields);
    return id;
  }

  const cache = (ttlMs: number) => new AccountFieldCache(redis, keys, { ttlMs, entries, now: () => clock });

  it('a missing field is cached as null too; fields of one account are cached apart', async () => {
    const id = await account({ currency: 'EUR' });
    const c = cache(1000);
    expect(await c.get(id, 'webhook_url')).toBeNull();
    expect(await c.get(id, 'webhook_url')).toBeNull();
    expect(await c.get(id, 'currency')).toBe('EUR');
    expect(await c.get(id, 'currency')).toBe('EUR');
    expect([await hgets(id, 'webhook_url'), await hgets(id, 'currency')]).toEqual([1, 1]);
  });

  it('a second get within the TTL sends no command to Redis; a value changed in Redis is seen once the TTL has passed', async () => {
    const id = await account({ webhook_url: 'https://example.com/old' });
    const c = cache(1000);
    expect(await c.get(id, 'webhook_url')).toBe('https://example.com/old');
    await redis.hset(keys.account(id), 'webhook_url', 'https://example.com/new');
    clock += 999;
    expect(await c.get(id, 'webhook_url')).toBe('https://example.com/old');
    expect(await hgets(id, 'webhook_url')).toBe(1);
    clock += 1;
    expect(await c.get(id, 'webhook_url')).toBe('https://example.com/new');
    expect(await hgets(id, 'webhook_url')).toBe(2);
  });

  it('a local invalidation is seen at once, by every cache of the process sharing the entries', async () => {
    const id = await account({ webhook_url: 'https://example.com/old' });
    const reader = cache(60_000);
    const writer = cache(60_000);
    expect(await reader.get(id, 'webhook_url')).toBe('https://example.com/old');
    await redis.hset(keys.account(id), 'webhook_url', 'https://example.com/new');
    writer.invalidate(id, 'webhook_url');
    expect(await reader.get(id, 'webhook_url')).toBe('https://example.com/new');
    expect(await hgets(id, 'webhook_url')).toBe(2);
  });

  it('concurrent misses of one field share one HGET', async () => {
    const id = await account({ fraud: '{}' });
    const c = cache(1000);
    const got = await Promise.all(Array.from({ length: 20 }, () => c.get(id, 'fraud')));
    expect(new Set(got)).toEqual(new Set(['{}']));
    expect(await hgets(id, 'fraud')).toBe(1);
  });

  it('a Redis error is not cached: the next get asks again (and concurrent waiters all see the error)', async () => {
    const id = randomUUID();
    // Not a hash: HGET answers WRONGTYPE.
    await redis.set(keys.account(id), 'not a hash');
    const c = cache(60_000);
    const failed = await Promise.allSettled([c.get(id, 'webhook_url'), c.get(id, 'webhook_url')]);
    expect(failed.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    expect(String((failed[0] as PromiseRejectedResult).reason)).toMatch(/WRONGTYPE/);
    await redis.del(keys.account(id));
    await redis.hset(keys.account(id), 'webhook_url', 'https://example.com/ok');
    expect(await c.get(id, 'webhook_url')).toBe('https://example.com/ok');
    expect(await hgets(id, 'webhook_url')).toBe(2);
  });

  it('an answer to a read in flight when the field was invalidated is not kept', async () => {
    const id = await account({ webhook_url: 'https://example.com/old' });
    const c = cache(60_000);
    const inFlight = c.get(id, 'webhook_url');
    c.invalidate(id, 'webhook_url');
    await redis.hset(keys.account(id), 'webhook_url', 'https://example.com/new');
    await inFlight;
    expect(await c.get(id, 'webhook_url')).toBe('https://example.com/new');
    expect(await hgets(id, 'webhook_url')).toBe(2);
  });

  it('is bounded: beyond maxEntries the least recently used entry goes', async () => {
    entries = new AccountFieldEntries(3);
    const c = cache(60_000);
    const [a, b, d, e] = await Promise.all(['a', 'b', 'd', 'e'].map((v) => account({ currency: v })));
    for (const id of [a!, b!, d!]) await c.get(id, 'currency');
    await c.get(a!, 'currency'); // a is now the most recent; b the least
    await c.get(e!, 'currency'); // evicts b
    expect(entries.entries.size).toBe(3);
    await c.get(a!, 'currency');
    await c.get(b!, 'currency');
    expect([await hgets(a!, 'currency'), await hgets(b!, 'currency'), await hgets(e!, 'currency')]).toEqual([1, 2, 1]);
  });

  it('ttlMs 0 turns it off: every get is an HGET', async () => {
    const id = await account({ currency: 'GBP' });
    const c = cache(0);
    await c.get(id, 'currency');
    await c.get(id, 'currency');
    expect(await hgets(id, 'currency')).toBe(2);
  });

  it('getParsed parses once per read from Redis', async () => {
    const id = await account({ fraud: '{"maxSends":2}' });
    const c = cache(1000);
    let parses = 0;
    const parse = (raw: string | null) => {
      parses++;
      return raw === null ? undefined : (JSON.parse(raw) as unknown);
    };
    const first = await c.getParsed(id, 'fraud', parse);
    expect(await c.getParsed(id, 'fraud', parse)).toBe(first);
    expect(parses).toBe(1);
    clock += 1000;
    expect(await c.getParsed(id, 'fraud', parse)).toEqual({ maxSends: 2 });
    expect(parses).toBe(2);
    expect(await hgets(id, 'fraud')).toBe(2);
  });

  describe('where it is used (the process-wide entries)', () => {
    const logger = pino({ level: 'silent' });
    const events = { publish: async () => '0-0' };

    it('FraudControls: overrides are read once per TTL; setOverrides in this process is seen at once, a change by another process within the TTL', async () => {
      const store = new AccountStore(redis, keys, sealer);
      const { account_id: id } = await store.create({ name: 'fraud-cache', currency: 'GBP', active: true });
      // Two instances, as an api process and the CLI-in-process would have; a third Redis client as "another process".
      const api = new FraudControls({ redis, keys, sealer, config, events, logger });
      const other = new Redis(REDIS_URL);
      const admin = new FraudControls({ redis: other, keys, sealer, config, events, logger });
      try {
        expect((await api.policy(id)).maxSends).toBe(config.fraud.maxSends);
        expect((await api.policy(id)).maxSends).toBe(config.fraud.maxSends);
        expect(await hgets(id, 'fraud')).toBe(1);

        await admin.setOverrides(id, { maxSends: 2 });
        expect((await api.policy(id)).maxSends).toBe(2);

        // Another process writes: this one keeps its entry until it expires (fieldCacheMs 300 here).
        await redis.hset(keys.account(id), 'fraud', JSON.stringify({ maxSends: 3 }));
        expect((await api.policy(id)).maxSends).toBe(2);
        // The admin API's GET reads fresh.
        expect(await api.overrides(id, { fresh: true })).toEqual({ maxSends: 3 });
        await redis.hset(keys.account(id), 'fraud', JSON.stringify({ maxSends: 4 }));
        await new Promise((r) => setTimeout(r, config.accounts.fieldCacheMs + 50));
        expect((await api.policy(id)).maxSends).toBe(4);
      } finally {
        accountFields.forget(keys.account(id), 'fraud');
        await other.quit();
      }
    });

    it('AccountStore.setWebhook drops the webhook_url entry of this process (set and cleared)', async () => {
      const store = new AccountStore(redis, keys, sealer, { allowPrivateWebhooks: true });
      const { account_id: id } = await store.create({ name: 'hook-cache', currency: 'GBP', active: true });
      const other = new Redis(REDIS_URL);
      const consumerSide = new AccountFieldCache(other, keys, { ttlMs: 60_000 });
      try {
        expect(await consumerSide.get(id, 'webhook_url')).toBeNull();
        await store.setWebhook(id, 'http://127.0.0.1:9/hook');
        expect(await consumerSide.get(id, 'webhook_url')).toBe('http://127.0.0.1:9/hook');
        await store.setWebhook(id, null);
        expect(await consumerSide.get(id, 'webhook_url')).toBeNull();
        expect(await hgets(id, 'webhook_url')).toBe(3);
      } finally {
        accountFields.forget(keys.account(id), 'webhook_url');
        await other.quit();
      }
    });

    it('WebhookConsumer: one HGET webhook_url for a burst of events of one account, every event still queued', async () => {
      const id = await account({ webhook_url: 'http://127.0.0.1:9/hook' });
      const queued: WebhookJobData[] = [];
      const consumer = new WebhookConsumer(redis, keys, 'webhooks', 'c1', logger, { add: async (d) => void queued.push(d), promoteHeld: async () => 0 }, { fieldCacheMs: 60_000 });
      const handle = (consumer as unknown as { handle(e: { id: string; fields: Record<string, string> }): Promise<void> }).handle.bind(consumer);
      try {
        for (let i = 1; i <= 10; i++) {
          await handle({ id: `1-${i}`, fields: { event: 'verification.sent', request_id: `r${i}`, account_id: id, method: 'flash_call', timestamp: '1' } });
        }
        expect(queued.map((q) => q.request_id)).toEqual(Array.from({ length: 10 }, (_, i) => `r${i + 1}`));
        expect(await hgets(id, 'webhook_url')).toBe(1);
      } finally {
        accountFields.forget(keys.account(id), 'webhook_url');
      }
    });
  });
});
