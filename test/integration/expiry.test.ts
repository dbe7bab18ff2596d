import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccountStore, type CreatedAccount } from '../../src/accounts/account-store.js';
import { Sealer } from '../../src/crypto/sealer.js';
import { Keys } from '../../src/store/keys.js';
import { utcDay, type Method } from '../../src/verification/types.js';
import { ExpirySweeper } from '../../src/verification/expiry-sweeper.js';
import { VerificationService } from '../../src/verification/verification-service.js';
import { REDIS_URL, deletePrefix, readEvents, testConfig } from '../helpers/engine.js';

/** Requests expire (status + one event) without anybody polling them. */
describe('expiry sweeper', () => {
  const config = testConfig();
  const keys = new Keys(config.redis.prefix);
  const sealer = new Sealer(Buffer.from(config.security.masterKey, 'hex'));
  const logger = pino({ level: 'silent' });
  let redis: Redis;
  let service: VerificationService;
  let account: CreatedAccount;
  let clock = Date.now();

  beforeAll(async () => {
    redis = new Redis(REDIS_URL);
    service = new VerificationService(redis, keys, sealer, config, { enqueue: async () => undefined }, logger, new Set<Method>(['flash_call', 'sms']));
    account = await new AccountStore(redis, keys, sealer).create({ name: 'x', balance: 10, currency: 'GBP', active: true });
  });
  afterAll(async () => {
    await deletePrefix(redis, config.redis.prefix);
    await redis.quit();
  });

  const sweeper = () => new ExpirySweeper(redis, keys, { intervalMs: 50, eventsMaxLen: 1000, batch: 2 }, logger, () => clock);
  const expiredEvents = async (id: string) =>
    (await readEvents(redis, keys)).filter((e) => e.request_id === id && e.event === 'verification.expired');

  it('expires due sent/delivered requests once, leaves the rest alone', async () => {
    clock = Date.now();
    const due = await Promise.all([1, 2, 3].map((i) => service.create(account, { phone_number: `+44770090030${i}`, expiry_seconds: 60 })));
    const later = await service.create(account, { phone_number: '+447700900309', expiry_seconds: 600 });
    const verified = await service.create(account, { phone_number: '+447700900308', expiry_seconds: 60 });
    const code = sealer.open((await redis.hget(keys.verification(verified.request_id), 'code_enc'))!, `code:${verified.request_id}`);
    await service.check(account, { request_id: verified.request_id, code });
    await redis.hset(keys.verification(due[0]!.request_id), 'status', 'delivered');

    clock = Date.now() + 61_000;
    // batch 2 with 4 due ids: the sweep loops until none is due.
    expect(await sweeper().sweep()).toBe(3);
    for (const c of due) {
      const h = await redis.hmget(keys.verification(c.request_id), 'status', 'at_expired', 'expires_at');
      expect(h[0]).toBe('expired');
      expect(h[1]).toBe(h[2]);
      const [ev] = await expiredEvents(c.request_id);
      expect(ev).toMatchObject({ status: 'expired', account_id: account.account_id, method: 'flash_call', timestamp: h[2] });
    }
    expect(await redis.hget(keys.verification(verified.request_id), 'status')).toBe('verified');
    expect(await expiredEvents(verified.request_id)).toEqual([]);
    expect(await redis.hget(keys.verification(later.request_id), 'status')).toBe('sent');
    expect(await redis.zrange(keys.expiries(), '0', '-1')).toEqual([later.request_id]);

    // A second sweeper (another worker) finds nothing left to do: one event per request.
    expect(await sweeper().sweep()).toBe(0);
    for (const c of due) expect(await expiredEvents(c.request_id)).toHaveLength(1);

    // The status endpoint agrees without any polling having happened before.
    expect((await service.status(account, due[1]!.request_id)).status).toBe('expired');
  });

  it('runs on its own timer', async () => {
    clock = Date.now();
    const c = await service.create(account, { phone_number: '+447700900310', expiry_seconds: 1 });
    clock = Date.now() + 2000;
    const s = sweeper();
    s.start();
    try {
      const end = Date.now() + 5000;
      while ((await redis.hget(keys.verification(c.request_id), 'status')) !== 'expired' && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 20));
      }
    } finally {
      await s.stop();
    }
    expect(await redis.hget(keys.verification(c.request_id), 'status')).toBe('expired');
  });

  // Billing per attempt actually sent: an attempt that never left is refunded when its request expires.
  it('refunds an attempt that never left when its request expires, once; bills one that may have', async () => {
    clock = Date.now();
    const balance = async () => Number(await redis.hget(keys.account(account.account_id), 'balance'));
    const usage = async (method: string) => Number((await redis.hget(keys.usage(account.account_id, utcDay(Date.now())), `${method}:count`)) ?? 0);
    const before = { balance: await balance(), flash: await usage('flash_call'), sms: await usage('sms') };
    // A flash call stuck in a backlog (never claimed); SMS jobs waiting for a bind or a throttle back-off
    // (claimed, sms_state unset or retry); an SMS whose submit_sm may have left; a flash call claimed.
    const backlog = await service.create(account, { phone_number: '+447700900320', expiry_seconds: 60 });
    const noBind = await service.create(account, { phone_number: '+447700900321', method: 'sms', expiry_seconds: 60 });
    const throttled = await service.create(account, { phone_number: '+447700900322', method: 'sms', expiry_seconds: 60 });
    const submitted = await service.create(account, { phone_number: '+447700900323', method: 'sms', expiry_seconds: 60 });
    const dialled = await service.create(account, { phone_number: '+447700900324', expiry_seconds: 60 });
    await redis.hset(keys.verification(noBind.request_id), 'dial_started', String(clock));
    await redis.hset(keys.verification(throttled.request_id), 'dial_started', String(clock), 'sms_state', 'retry');
    await redis.hset(keys.verification(submitted.request_id), 'dial_started', String(clock), 'sms_state', 'submitting');
    await redis.hset(keys.verification(dialled.request_id), 'dial_started', String(clock));
    const cost = async (id: string) => Number(await redis.hget(keys.verification(id), 'cost'));
    const charged = (await cost(submitted.request_id)) + (await cost(dialled.request_id));
    expect(charged).toBeGreaterThan(0);

    clock = Date.now() + 61_000;
    expect(await sweeper().sweep()).toBe(5);
    expect(await balance()).toBe(before.balance - charged);
    expect(await usage('flash_call')).toBe(before.flash + 1);
    expect(await usage('sms')).toBe(before.sms + 1);
    for (const c of [backlog, noBind, throttled]) {
      const status = await service.status(account, c.request_id);
      expect(status.status).toBe('expired');
      expect(await cost(c.request_id)).toBe(0);
    }
    expect((await service.status(account, submitted.request_id)).cost).toEqual(submitted.cost);

    // Swept again (another worker, or the request put back in the set): no second refund.
    for (const c of [backlog, noBind, throttled]) await redis.zadd(keys.expiries(), 0, c.request_id);
    await redis.hset(keys.verification(backlog.request_id), 'status', 'sent');
    await sweeper().sweep();
    expect(await balance()).toBe(before.balance - charged);
  });

  it('refunds the current step of a workflow that never left when the request expires', async () => {
    clock = Date.now();
    const balance = async () => Number(await redis.hget(keys.account(account.account_id), 'balance'));
    const before = await balance();
    const c = await service.create(account, { phone_number: '+447700900330', expiry_seconds: 60, workflow: [{ method: 'flash_call', timeout_seconds: 20 }, { method: 'sms' }] });
    expect(await balance()).toBeLessThan(before);
    clock = Date.now() + 61_000;
    expect(await sweeper().sweep()).toBe(1);
    expect(await balance()).toBe(before);
    expect(await redis.hmget(keys.verification(c.request_id), 'status', 'cost', 'att0_cost', 'att0_refunded')).toEqual(['expired', '0', '0', '1']);
  });
});
