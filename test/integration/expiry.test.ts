import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { claimDelivery } from '../../src/engine/delivery-claim.js';
import { EventPublisher } from '../../src/events/event-publisher.js';
import { ExpirySweeper } from '../../src/verification/expiry-sweeper.js';
import { readEvents } from '../helpers/engine.js';
import { startServiceOnRedis, type ServiceOnRedis } from '../helpers/service-on-redis.js';

/** Requests expire (status + one event) without anybody polling them. */
describe('expiry sweeper', () => {
  let s: ServiceOnRedis;
  let clock = Date.now();

  beforeAll(async () => {
    s = await startServiceOnRedis(['flash_call', 'sms']);
  });
  afterAll(async () => {
    await s?.stop();
  });

  const sweeper = () => new ExpirySweeper(s.redis, s.keys, { intervalMs: 50, eventsMaxLen: 1000, batch: 2 }, s.logger, () => clock);
  const expiredEvents = async (id: string) =>
    (await readEvents(s.redis, s.keys)).filter((e) => e.request_id === id && e.event === 'verification.expired');

  it('expires due sent/delivered requests once, leaves the rest alone', async () => {
    clock = Date.now();
    const due = await Promise.all([1, 2, 3].map((i) => s.service.create(s.account, { phone_number: `+44770090030${i}`, expiry_seconds: 60 })));
    const later = await s.service.create(s.account, { phone_number: '+447700900309', expiry_seconds: 600 });
    const verified = await s.service.create(s.account, { phone_number: '+447700900308', expiry_seconds: 60 });
    const code = s.sealer.open((await s.redis.hget(s.keys.verification(verified.request_id), 'code_enc'))!, `code:${verified.request_id}`);
    await s.service.check(s.account, { request_id: verified.request_id, code });
    await s.redis.hset(s.keys.verification(due[0]!.request_id), 'status', 'delivered');

    clock = Date.now() + 61_000;
    // batch 2 with 4 due ids: the sweep loops until none is due.
    expect(await sweeper().sweep()).toBe(3);
    for (const c of due) {
      const h = await s.redis.hmget(s.keys.verification(c.request_id), 'status', 'at_expired', 'expires_at');
      expect(h[0]).toBe('expired');
      expect(h[1]).toBe(h[2]);
      const [ev] = await expiredEvents(c.request_id);
      expect(ev).toMatchObject({ status: 'expired', account_id: s.account.account_id, method: 'flash_call', timestamp: h[2] });
    }
    expect(await s.redis.hget(s.keys.verification(verified.request_id), 'status')).toBe('verified');
    expect(await expiredEvents(verified.request_id)).toEqual([]);
    expect(await s.redis.hget(s.keys.verification(later.request_id), 'status')).toBe('sent');
    expect(await s.redis.zrange(s.keys.expiries(), '0', '-1')).toEqual([later.request_id]);

    // A second sweeper (another worker) finds nothing left to do: one event per request.
    expect(await sweeper().sweep()).toBe(0);
    for (const c of due) expect(await expiredEvents(c.request_id)).toHaveLength(1);

    // The status endpoint agrees without any polling having happened before.
    expect((await s.service.status(s.account, due[1]!.request_id)).status).toBe('expired');
  });

  it('runs on its own timer', async () => {
    clock = Date.now();
    const c = await s.service.create(s.account, { phone_number: '+447700900310', expiry_seconds: 1 });
    clock = Date.now() + 2000;
    const running = sweeper();
    running.start();
    try {
      const end = Date.now() + 5000;
      while ((await s.redis.hget(s.keys.verification(c.request_id), 'status')) !== 'expired' && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 20));
      }
    } finally {
      await running.stop();
    }
    expect(await s.redis.hget(s.keys.verification(c.request_id), 'status')).toBe('expired');
  });

  // Billing per attempt actually sent: an attempt that never left is refunded when its request expires.
  it('refunds an attempt that never left when its request expires, once; bills one that may have', async () => {
    clock = Date.now();
    const before = { balance: await s.balance(), flash: await s.usage('flash_call'), sms: await s.usage('sms') };
    // A flash call stuck in a backlog (never claimed); SMS jobs waiting for a bind or a throttle back-off
    // (claimed, sms_state unset or retry); an SMS whose submit_sm may have left; a flash call claimed.
    const backlog = await s.service.create(s.account, { phone_number: '+447700900320', expiry_seconds: 60 });
    const noBind = await s.service.create(s.account, { phone_number: '+447700900321', method: 'sms', expiry_seconds: 60 });
    const throttled = await s.service.create(s.account, { phone_number: '+447700900322', method: 'sms', expiry_seconds: 60 });
    const submitted = await s.service.create(s.account, { phone_number: '+447700900323', method: 'sms', expiry_seconds: 60 });
    const dialled = await s.service.create(s.account, { phone_number: '+447700900324', expiry_seconds: 60 });
    await s.redis.hset(s.keys.verification(noBind.request_id), 'dial_started', String(clock));
    await s.redis.hset(s.keys.verification(throttled.request_id), 'dial_started', String(clock), 'sms_state', 'retry');
    await s.redis.hset(s.keys.verification(submitted.request_id), 'dial_started', String(clock), 'sms_state', 'submitting');
    await s.redis.hset(s.keys.verification(dialled.request_id), 'dial_started', String(clock));
    const charged = (await s.cost(submitted.request_id)) + (await s.cost(dialled.request_id));
    expect(charged).toBeGreaterThan(0);

    clock = Date.now() + 61_000;
    expect(await sweeper().sweep()).toBe(5);
    expect(await s.balance()).toBe(before.balance - charged);
    expect(await s.usage('flash_call')).toBe(before.flash + 1);
    expect(await s.usage('sms')).toBe(before.sms + 1);
    for (const c of [backlog, noBind, throttled]) {
      const status = await s.service.status(s.account, c.request_id);
      expect(status.status).toBe('expired');
      expect(await s.cost(c.request_id)).toBe(0);
    }
    expect((await s.service.status(s.account, submitted.request_id)).cost).toEqual(submitted.cost);

    // Swept again (another worker, or the request put back in the set): no second refund.
    for (const c of [backlog, noBind, throttled]) await s.redis.zadd(s.keys.expiries(), 0, c.request_id);
    await s.redis.hset(s.keys.verification(backlog.request_id), 'status', 'sent');
    await sweeper().sweep();
    expect(await s.balance()).toBe(before.balance - charged);
  });

  it('a delivery job that comes after the time is up, before the sweeper: the request expires as the sweeper makes it (refunded, verification.expired), not failed', async () => {
    const before = await s.balance();
    const late = await s.service.create(s.account, { phone_number: '+447700900325', expiry_seconds: 60 });
    const key = s.keys.verification(late.request_id);
    await s.redis.hset(key, 'expires_at', String(Date.now() - 1000));
    const events = new EventPublisher(s.redis, s.keys, 1000);
    const deps = { redis: s.redis, keys: s.keys, sealer: s.sealer, events, logger: s.logger };
    expect(await claimDelivery(deps, { requestId: late.request_id, jobId: late.request_id }, 'flash_call')).toBeUndefined();
    expect(await s.redis.hget(key, 'status')).toBe('expired');
    expect(await s.balance()).toBe(before);
    expect(await expiredEvents(late.request_id)).toHaveLength(1);
    expect((await readEvents(s.redis, s.keys)).filter((e) => e.request_id === late.request_id && e.status === 'failed')).toEqual([]);
    // The sweeper comes after: nothing more.
    clock = Date.now() + 1000;
    await sweeper().sweep();
    expect(await expiredEvents(late.request_id)).toHaveLength(1);
    expect(await s.balance()).toBe(before);
  });

  it('refunds the current step of a workflow that never left when the request expires', async () => {
    clock = Date.now();
    const before = await s.balance();
    const c = await s.service.create(s.account, { phone_number: '+447700900330', expiry_seconds: 60, workflow: [{ method: 'flash_call', timeout_seconds: 20 }, { method: 'sms' }] });
    expect(await s.balance()).toBeLessThan(before);
    clock = Date.now() + 61_000;
    expect(await sweeper().sweep()).toBe(1);
    expect(await s.balance()).toBe(before);
    expect(await s.redis.hmget(s.keys.verification(c.request_id), 'status', 'cost', 'att0_cost', 'att0_refunded')).toEqual(['expired', '0', '0', '1']);
  });
});
