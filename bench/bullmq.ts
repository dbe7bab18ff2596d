/**
 * `npm run bench -- bullmq`: what BullMQ alone costs per job on this machine.
 * One process adds no-op jobs to a queue at a fixed rate (open loop, in
 * batches every 10 ms) while a Worker in the same process (concurrency 200)
 * takes them; Redis's CPU and this process's CPU are measured from /proc over
 * the run. `--keep` chooses the completed-job retention: the engine's
 * delivery jobs (`{age: 3600, count: 10000}`) or `true` (removed at once).
 * Bounded: at most 200,000 jobs and 120 s; the queue is obliterated at the end.
 */
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { JOB_OPTIONS } from '../src/engine/queues.js';
import { redisTarget } from '../src/store/redis.js';
import { parseBenchArgs } from './lib/args.js';
import { loadAverages, machineDescription, sampleProc } from './lib/procstat.js';
import { redisPid } from './lib/stack.js';

const USAGE = `npm run bench -- bullmq [--jobs 20000] [--rate 2000] [--keep engine|none] [--redis-url redis://127.0.0.1:6379]
  --jobs N      jobs to add and process (max 200000)
  --rate N      jobs added per second (max 20000)
  --keep K      completed jobs: "engine" keeps them as the delivery queues do (removeOnComplete {age: 3600, count: 10000}),
                "none" removes each at once (removeOnComplete: true)`;

const a = parseBenchArgs(process.argv.slice(2), {
  jobs: { type: 'string', default: '20000' },
  rate: { type: 'string', default: '2000' },
  keep: { type: 'string', default: 'engine' },
  'redis-url': { type: 'string', default: 'redis://127.0.0.1:6379' },
});
if (a.help) {
  console.log(USAGE);
  process.exit(0);
}
const jobs = a.num('jobs', 1, 200_000);
const rate = a.num('rate', 1, 20_000);
const keep = a.str('keep');
if (keep !== 'engine' && keep !== 'none') throw new Error(`--keep must be engine or none (got ${keep})`);
const redisUrl = a.str('redis-url');
const options = keep === 'engine' ? JOB_OPTIONS : { ...JOB_OPTIONS, removeOnComplete: true };

const prefix = `fvbench-bullmq-${process.pid}`;
const connection = new Redis(redisTarget(redisUrl), { maxRetriesPerRequest: null });
const queue = new Queue('flash', { connection, prefix });
let done = 0;
let finish: () => void = () => undefined;
const finished = new Promise<void>((r) => (finish = r));
const worker = new Worker('flash', async () => undefined, { connection, prefix, concurrency: 200 });
worker.on('completed', () => {
  if (++done === jobs) finish();
});
const hardStop = setTimeout(() => finish(), 120_000);

try {
  await Promise.all([queue.waitUntilReady(), worker.waitUntilReady()]);
  const rpid = await redisPid(redisUrl);
  console.log(`== bullmq: ${jobs} no-op jobs at ${rate}/s, keep completed: ${keep} (${JSON.stringify(options.removeOnComplete)})`);
  console.log(`command: npm run bench -- bullmq ${process.argv.slice(2).join(' ')}`);
  console.log(`date: ${new Date().toISOString()}   load average before: ${loadAverages()}`);
  console.log(`machine: ${machineDescription()}`);
  const r0 = rpid ? sampleProc(rpid) : undefined;
  const s0 = sampleProc(process.pid)!;
  const t0 = performance.now();
  let added = 0;
  const adding = setInterval(() => {
    const due = Math.min(jobs, Math.floor(((performance.now() - t0) / 1000) * rate));
    for (; added < due; added++) void queue.add('flash', { request_id: `b${added}` }, { ...options, jobId: `b${added}` });
    if (added >= jobs) clearInterval(adding);
  }, 10);
  await finished;
  clearInterval(adding);
  const seconds = (performance.now() - t0) / 1000;
  const r1 = rpid ? sampleProc(rpid) : undefined;
  const s1 = sampleProc(process.pid)!;
  const per = (x0: number, x1: number) => (((x1 - x0) * 1e6) / Math.max(1, done)).toFixed(1);
  console.log(`jobs: ${added} added, ${done} completed in ${seconds.toFixed(2)} s (${(done / seconds).toFixed(0)}/s)`);
  console.log(
    `CPU per job: redis-server ${r0 && r1 ? per(r0.cpuSeconds, r1.cpuSeconds) : '?'} µs (shared server), ` +
      `this process (producer + worker) ${per(s0.cpuSeconds, s1.cpuSeconds)} µs`,
  );
  console.log(`load average after: ${loadAverages()}`);
} finally {
  clearTimeout(hardStop);
  await worker.close();
  await queue.obliterate({ force: true }).catch(() => undefined);
  await queue.close();
  connection.disconnect();
}
