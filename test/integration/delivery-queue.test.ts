import { randomBytes } from 'node:crypto';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { BullDeliveryQueue, QUEUE_NAMES } from '../../src/engine/queues.js';
import { deletePrefix, REDIS_URL } from '../helpers/engine.js';

/** The producer side of the delivery queues against real Redis: micro-batched adds. */
const prefix = `fvtest-dq-${randomBytes(4).toString('hex')}`;
const redis = new Redis(REDIS_URL);
const connection = { url: REDIS_URL };
let q: BullDeliveryQueue | undefined;

afterEach(async () => {
  vi.restoreAllMocks();
  await q?.close();
  q = undefined;
});
afterAll(async () => {
  await deletePrefix(redis, prefix);
  await redis.quit();
});

describe('BullDeliveryQueue', () => {
  it('adds the jobs of concurrent enqueues in one addBulk; each is a job with its id and the request id as data', async () => {
    q = new BullDeliveryQueue(connection, `${prefix}:a`);
    const bulk = vi.spyOn(Queue.prototype, 'addBulk');
    const ids = Array.from({ length: 60 }, (_, i) => `req-${i}`);
    await Promise.all([...ids.map((id) => q!.enqueue('flash_call', id)), q.enqueue('sms', 'sms-1'), q.enqueue('voice', 'req-1', 'req-1-r1')]);
    // One batch per method, not one write per job.
    expect(bulk).toHaveBeenCalledTimes(3);
    expect(bulk.mock.calls.map((c) => c[0].length).sort((a, b) => a - b)).toEqual([1, 1, 60]);
    const flash = q.queue('flash_call');
    expect(await flash.getJobCountByTypes('wait')).toBe(60);
    const job = await flash.getJob('req-7');
    expect(job?.name).toBe(QUEUE_NAMES.flash_call);
    expect(job?.data).toEqual({ request_id: 'req-7' });
    expect(job?.opts.attempts).toBe(1);
    expect((await q.queue('voice').getJob('req-1-r1'))?.data).toEqual({ request_id: 'req-1' });
    expect((await q.queue('sms').getJob('sms-1'))?.data).toEqual({ request_id: 'sms-1' });
  });

  it('an id enqueued twice (in one batch or later) is one job', async () => {
    q = new BullDeliveryQueue(connection, `${prefix}:b`);
    await Promise.all([q.enqueue('flash_call', 'dup'), q.enqueue('flash_call', 'dup')]);
    await q.enqueue('flash_call', 'dup');
    expect(await q.queue('flash_call').getJobCountByTypes('wait')).toBe(1);
  });

  it('with Redis unreachable every enqueue of the batch fails with a clear error within the deadline', async () => {
    q = new BullDeliveryQueue({ host: '127.0.0.1', port: 1, maxRetriesPerRequest: null, retryStrategy: () => 1000 }, `${prefix}:d`, 300);
    q.queue('flash_call').on('error', () => undefined); // the refused connection is the point, not noise
    const results = await Promise.allSettled([q.enqueue('flash_call', 'x1'), q.enqueue('flash_call', 'x2')]);
    for (const r of results) {
      expect(r.status).toBe('rejected');
      expect(String((r as PromiseRejectedResult).reason)).toContain('queue unavailable: Redis did not answer');
    }
  });
});
