import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccountStore, type CreatedAccount } from '../../src/accounts/account-store.js';
import { Sealer } from '../../src/crypto/sealer.js';
import { Keys } from '../../src/store/keys.js';
import type { Method } from '../../src/verification/types.js';
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
    service = new VerificationService(redis, keys, sealer, config, { enqueue: async () => undefined }, logger, new Set<Method>(['flash_call']));
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
});
