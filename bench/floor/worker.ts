/**
 * The floor's worker process (bench/floor.ts): a BullMQ Worker that holds
 * each job for the ring time (a flash call is in flight about that long),
 * writes the record and a `delivered` event, and an events consumer
 * (XREADGROUP, one HSET per event, one XACK per batch) that applies every
 * event to its record. With a UAS port, each job places the least SIP of a
 * flash call against it (sip-leg.ts) instead of waiting out the ring time.
 */
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { redisTarget } from '../../src/store/redis.js';
import { FloorSip } from './sip-leg.js';

const [redisUrl, prefix, ringArg, concArg, uasPort] = process.argv.slice(2);
if (!redisUrl || !prefix || !ringArg || !concArg) throw new Error('usage: worker.ts REDIS_URL PREFIX RING_MS CONCURRENCY [UAS_PORT]');
// With a UAS port each job is a flash call's least SIP (sip-leg.ts) instead of a timer of the ring time.
const sip = uasPort ? new FloorSip('127.0.0.1', Number(uasPort), Number(ringArg)) : undefined;
await sip?.open();
let failedCalls = 0;
const target = redisTarget(redisUrl);
const redis = new Redis(target, { enableAutoPipelining: true });
const events = `${prefix}:events`;
let done = 0;

const worker = new Worker<{ request_id: string }>(
  'flash',
  async (job) => {
    const id = job.data.request_id;
    if (sip) {
      if (!(await sip.call(id, `+4474${String(done + failedCalls).padStart(8, '0')}`))) failedCalls++;
    } else await new Promise((r) => setTimeout(r, Number(ringArg)));
    await Promise.all([
      redis.hset(`${prefix}:vr:${id}`, 'rang_at', Date.now()),
      redis.xadd(events, 'MAXLEN', '~', '100000', '*', 'event', 'verification.delivered', 'request_id', id),
    ]);
    done++;
  },
  { connection: new Redis(target, { maxRetriesPerRequest: null }), prefix: `${prefix}:bull`, concurrency: Number(concArg) },
);

// The events consumer: status from the stream.
const reader = new Redis(target, { maxRetriesPerRequest: null });
await redis.xgroup('CREATE', events, 'status', '0', 'MKSTREAM').catch(() => undefined);
let stopping = false;
let applied = 0;
void (async () => {
  while (!stopping) {
    const r = (await reader.xreadgroup('GROUP', 'status', 'c1', 'COUNT', 200, 'BLOCK', 1000, 'STREAMS', events, '>')) as
      | [string, [string, string[]][]][]
      | null;
    const entries = r?.[0]?.[1] ?? [];
    if (!entries.length) continue;
    await Promise.all(
      entries.map(([, f]) => {
        const id = f[f.indexOf('request_id') + 1];
        const ev = f[f.indexOf('event') + 1] ?? '';
        return redis.hset(`${prefix}:vr:${id}`, 'status', ev.replace('verification.', ''));
      }),
    );
    await redis.xack(events, 'status', ...entries.map(([id]) => id));
    applied += entries.length;
  }
})();
setInterval(() => process.stdout.write(`floor worker: ${done} jobs done, ${applied} events applied, ${failedCalls} calls failed\n`), 1000).unref();
process.stdout.write('floor worker started\n');
process.on('SIGTERM', () => {
  stopping = true;
  process.stdout.write(`floor worker: ${done} jobs done, ${applied} events applied, ${failedCalls} calls failed\n`);
  void worker.close().finally(() => process.exit(0));
});
