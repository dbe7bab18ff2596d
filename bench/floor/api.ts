/**
 * The floor's api process (bench/floor.ts): the least a POST /v1/verify of
 * this design does. Fastify, Basic auth compared in constant time, the JSON
 * body, one record HSET, one `sent` event XADD, one BullMQ add (job id = the
 * request id), a 201. No validation, pricing, sealing, rate limits or fraud
 * controls: what is left is the platform's own cost per request.
 */
import { randomUUID, timingSafeEqual } from 'node:crypto';
import { Queue } from 'bullmq';
import Fastify from 'fastify';
import { Redis } from 'ioredis';
import { redisTarget } from '../../src/store/redis.js';

const [redisUrl, prefix, portArg] = process.argv.slice(2);
if (!redisUrl || !prefix || !portArg) throw new Error('usage: api.ts REDIS_URL PREFIX PORT');
const target = redisTarget(redisUrl);
const redis = new Redis(target, { enableAutoPipelining: true });
const queue = new Queue('flash', { connection: new Redis(target, { maxRetriesPerRequest: null }), prefix: `${prefix}:bull` });
const expected = Buffer.from(`Basic ${Buffer.from('floor:secret').toString('base64')}`);

const app = Fastify({ logger: false });
app.post('/v1/verify', async (req, reply) => {
  const auth = Buffer.from(req.headers.authorization ?? '');
  if (auth.length !== expected.length || !timingSafeEqual(auth, expected)) return reply.code(401).send({ error: 'unauthorized' });
  const body = req.body as { phone_number?: string };
  const id = randomUUID();
  const now = Date.now();
  await Promise.all([
    redis.hset(`${prefix}:vr:${id}`, 'status', 'sent', 'phone', body.phone_number ?? '', 'created_at', now),
    redis.xadd(`${prefix}:events`, 'MAXLEN', '~', '100000', '*', 'event', 'verification.sent', 'request_id', id),
  ]);
  await queue.add('flash_call', { request_id: id }, { jobId: id, attempts: 1, removeOnComplete: { age: 3600, count: 10_000 } });
  return reply.code(201).send({ request_id: id, status: 'sent' });
});
await app.listen({ host: '127.0.0.1', port: Number(portArg) });
process.stdout.write('floor api listening\n');
process.on('SIGTERM', () => void Promise.all([app.close(), queue.close()]).finally(() => process.exit(0)));
