import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventPublisher } from '../../src/events/event-publisher.js';
import { StatusConsumer } from '../../src/events/status-consumer.js';
import { Metrics } from '../../src/metrics/metrics.js';
import { scripts } from '../../src/store/scripts.js';
import { ExpirySweeper } from '../../src/verification/expiry-sweeper.js';
import { REDIS_URL } from '../helpers/engine.js';
import { startServiceOnRedis, type ServiceOnRedis } from '../helpers/service-on-redis.js';

/**
 * The sealed code (code_enc) is what a worker opens to deliver it; once a request has ended (verified, expired,
 * canceled, failed) nothing may deliver it again, so it is deleted then rather than kept until the record's retention.
 */
describe('the sealed code is deleted when its request ends', () => {
  let s: ServiceOnRedis;
  let n = 0;

  beforeAll(async () => {
    s = await startServiceOnRedis(['flash_call', 'sms']);
  });
  afterAll(async () => s?.stop());

  const create = async (extra: Record<string, unknown> = {}) =>
    (await s.service.create(s.account, { phone_number: `+4477009007${String(n++).padStart(2, '0')}`, ...extra })).request_id;
  const sealedCode = (id: string) => s.redis.hget(s.keys.verification(id), 'code_enc');
  const codeOf = async (id: string) => s.sealer.open((await sealedCode(id))!, `code:${id}`);
  const wrong = (code: string) => (code === '0000' ? '1111' : '0000');

  it('verified: gone at once, and a delivery job run afterwards is told the request is past sent, not that it vanished', async () => {
    const id = await create();
    expect(await sealedCode(id)).toMatch(/^v1\./);
    await s.service.check(s.account, { request_id: id, code: await codeOf(id) });
    expect(await s.redis.hget(s.keys.verification(id), 'status')).toBe('verified');
    expect(await sealedCode(id)).toBeNull();
    const [verdict] = (await scripts.claimDelivery.run(s.redis, [s.keys.verification(id)], ['flash_call', Date.now(), '', '', 'status'])) as [string];
    expect(verdict).toBe('past_sent');
    // What the request shows is unchanged.
    expect(await s.service.status(s.account, id)).toMatchObject({ request_id: id, status: 'verified' });
  });

  it('expired by wrong codes, expired by the sweeper, canceled: gone; a live request keeps it', async () => {
    const spent = await create();
    const bad = wrong(await codeOf(spent));
    for (let i = 0; i < 3; i++) await s.service.check(s.account, { request_id: spent, code: bad }).catch(() => undefined);
    expect(await s.redis.hget(s.keys.verification(spent), 'status')).toBe('expired');
    expect(await sealedCode(spent)).toBeNull();

    const due = await create({ expiry_seconds: 60 });
    const live = await create({ expiry_seconds: 600 });
    await new ExpirySweeper(s.redis, s.keys, { intervalMs: 50, eventsMaxLen: 1000, batch: 10 }, s.logger, () => Date.now() + 61_000).sweep();
    expect(await s.redis.hget(s.keys.verification(due), 'status')).toBe('expired');
    expect(await sealedCode(due)).toBeNull();
    expect(await sealedCode(live)).toMatch(/^v1\./);

    await s.service.cancel(s.account, live);
    expect(await s.redis.hget(s.keys.verification(live), 'status')).toBe('canceled');
    expect(await sealedCode(live)).toBeNull();
  });

  it('failed (a delivery event applied by the status consumer): gone; a delivered one keeps it', async () => {
    const failed = await create();
    const delivered = await create();
    const publisher = new EventPublisher(s.redis, s.keys, 1000);
    await publisher.publish({ request_id: failed, account_id: s.account.account_id, method: 'flash_call', status: 'failed', detail: { reason: 'busy' } });
    await publisher.publish({ request_id: delivered, account_id: s.account.account_id, method: 'flash_call', status: 'delivered', detail: {} });
    const conn = new Redis(REDIS_URL);
    const consumer = new StatusConsumer(conn, s.keys, 'status', 'test', s.logger, new Metrics({ defaultMetrics: false }), { blockMs: 50 });
    await consumer.start();
    await consumer.drain(5000);
    await conn.quit();
    expect(await s.redis.hget(s.keys.verification(failed), 'status')).toBe('failed');
    expect(await sealedCode(failed)).toBeNull();
    expect(await s.redis.hget(s.keys.verification(delivered), 'status')).toBe('delivered');
    // Still live: the user may yet enter it, and a resend delivers the same request again.
    expect(await sealedCode(delivered)).toMatch(/^v1\./);
  });
});
