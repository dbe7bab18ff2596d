/**
 * API load, enqueue only: `POST /v1/verify` at an open-loop rate against
 * `--role api` processes alone, so every accepted verification is validated,
 * priced, debited, sealed, stored and queued, and nothing delivers it.
 *
 *   npm run bench -- api [--rate 1000] [--duration 10] [--api-procs 1]
 *                        [--connections 64] [--via http|queue] [--profile api]
 *
 * Prints throughput, latency percentiles from each request's due time (open
 * loop: a stall is charged to every request that should have left during it)
 * and from its actual send, failures by kind, and CPU and RSS per process.
 */
import { parseBenchArgs, STACK_OPTIONS, STACK_USAGE } from './lib/args.js';
import { startFlashverify } from './lib/engine.js';
import { httpClientArg, httpFirer, runOpenLoop, type FireResult, type LoadResult } from './lib/load.js';
import { CpuWindow, formatCpu, loadAverages, machineDescription } from './lib/procstat.js';
import { header, line } from './lib/report.js';
import { redisPid, Stack } from './lib/stack.js';
import { formatMs, summarize } from './lib/stats.js';

const USAGE = `npm run bench -- api [options]
  --rate N           requests per second, open loop (default 1000, max 20000)
  --duration S       seconds of load (default 10, max 300: every request leaves a record and a job in Redis)
  --api-procs N      --role api processes, requests spread round-robin (default 1)
  --connections N    keep-alive connections per api process (default 64)
  --via http|queue   HTTP (default), or the in-process producer straight into BullMQ
  --client raw|node  the generator's HTTP client: raw (default, bench/lib/raw-http.ts) or node:http
  --log-level L      engine log level (default warn)
  --profile api      run the api processes under node --cpu-prof
${STACK_USAGE}`;

async function main(): Promise<void> {
  const a = parseBenchArgs(process.argv.slice(2), {
    rate: { type: 'string', default: '1000' },
    duration: { type: 'string', default: '10' },
    'api-procs': { type: 'string', default: '1' },
    connections: { type: 'string', default: '64' },
    via: { type: 'string', default: 'http' },
    client: { type: 'string', default: 'raw' },
    'log-level': { type: 'string', default: 'warn' },
    profile: { type: 'string' },
    ...STACK_OPTIONS,
  });
  if (a.help) return line(USAGE);
  const rate = a.num('rate', 1, 20_000);
  const duration = a.num('duration', 1, 300);
  const apiProcs = a.num('api-procs', 1, 8);
  const via = a.str('via');
  if (via !== 'http' && via !== 'queue') throw new Error('--via must be http or queue');
  const client = httpClientArg(a.str('client'));
  const profile = a.list('profile');
  const stack = new Stack(a.str('redis-url'), a.bool('keep-logs') || profile.length > 0);
  stack.hardCap(duration + 240);
  try {
    header(`api (enqueue only): ${rate} requests/s for ${duration} s, ${apiProcs} api process(es), via ${via}`, `npm run bench -- api ${process.argv.slice(2).join(' ')}`);
    line(`machine: ${machineDescription()}`);
    stack.build(a.bool('use-dist'), a.str('app') || undefined);
    const engine = await startFlashverify(stack, {
      apiProcs: via === 'http' ? apiProcs : 0,
      workerProcs: 0,
      cps: 200,
      flashConcurrency: 500,
      ringMs: 1000,
      logLevel: a.str('log-level'),
      profile,
    });
    line(`engine: api pids ${engine.apis.map((x) => x.m.pid).join(',') || '- (in-process producer)'}; prefix ${stack.prefix}`);
    let firer: { fire(i: number): Promise<FireResult>; close(): void };
    // Every request a new destination (a pending verification blocks another to the same number; the CLI cooldown is per destination).
    let seq = 0;
    const phone = (_i: number): string => `+4474${String((seq++ * 7919 + process.pid * 104_729) % 100_000_000).padStart(8, '0')}`;
    if (via === 'http') {
      firer = httpFirer({
        targets: engine.apis.map((x) => ({ host: '127.0.0.1', port: x.port })),
        path: '/v1/verify',
        headers: { authorization: `Basic ${Buffer.from(`${engine.account.api_key}:${engine.account.api_secret}`).toString('base64')}` },
        body: (i) => `{"phone_number":"${phone(i)}","method":"flash_call"}`,
        expectStatus: 201,
        connections: a.num('connections', 1, 1024),
        timeoutMs: 10_000,
        wantRequestId: false,
        client,
      });
    } else {
      const { FlashVerifyProducer, ApiError } = await import('../src/producer.js');
      const producer = await FlashVerifyProducer.connect({ configFile: engine.configFile, methods: ['flash_call'] });
      const who = { apiKey: engine.account.api_key, apiSecret: engine.account.api_secret };
      firer = {
        fire: async (i) => {
          try {
            await producer.createVerification(who, { phone_number: phone(i), method: 'flash_call' });
            return { ok: true };
          } catch (err) {
            return { ok: false, kind: err instanceof ApiError ? `producer ${err.code}` : err instanceof Error ? err.message : String(err) };
          }
        },
        close: () => void producer.close(),
      };
    }
    // A short warm-up (not measured): JIT, connection pools, Redis script cache.
    await runOpenLoop({ rate: Math.min(rate, 500), durationSeconds: 2, maxRequests: 1000, maxInFlight: 5000, drainMs: 5000, fire: firer.fire });
    const rpid = await redisPid(a.str('redis-url'));
    const t0 = performance.now();
    const cpu = new CpuWindow([
      ...engine.apis.map((x, i) => ({ name: `api${i}`, pid: x.m.pid })),
      ...(rpid ? [{ name: 'redis-server (shared)', pid: rpid }] : []),
      { name: via === 'http' ? 'bench (load generator)' : 'bench (generator + producer)', pid: process.pid },
    ]);
    const load = await runOpenLoop({
      rate,
      durationSeconds: duration,
      maxRequests: 1_000_000,
      maxInFlight: 20_000,
      drainMs: 15_000,
      fire: firer.fire,
      onProgress: (p) => {
        if (Math.round(p.elapsedMs / 1000) % 5 === 0) line(`  t=${(p.elapsedMs / 1000).toFixed(0)} s sent ${p.sent} ok ${p.ok} failed ${p.failed} in flight ${p.inFlight}`);
      },
    });
    const usage = cpu.finish();
    const wall = (performance.now() - t0) / 1000;
    firer.close();
    line();
    line(`requests: ${load.sent} sent, ${load.ok} accepted (201), failed: ${load.failures.toString()}`);
    line(`  throughput: ${(load.ok / (load.elapsedMs / 1000)).toFixed(0)} accepted/s (last answer at ${(load.elapsedMs / 1000).toFixed(2)} s; offered ${rate}/s)`);
    line(`  latency from due time: ${formatMs(latency(load, 'due'))}`);
    line(`  latency from send:     ${formatMs(latency(load, 'sent'))}`);
    const lag: number[] = [];
    for (let i = 0; i < load.total; i++) if (!Number.isNaN(load.sentAt[i]!)) lag.push(load.sentAt[i]! - load.due[i]!);
    line(`  send lag (sent − due): ${formatMs(summarize(lag))}`);
    line(`CPU over ${wall.toFixed(1)} s, % of one core:`);
    line(formatCpu(usage));
    const apiCpu = usage.procs.filter((p) => p.name.startsWith('api')).reduce((s, p) => s + p.cpuPercent, 0);
    if (load.ok) line(`  api CPU per accepted request: ${(((apiCpu / 100) * wall * 1000) / load.ok).toFixed(3)} ms`);
    if (profile.length) line(`cpu profiles: ${engine.profileDir} (written when the processes exit)`);
    line(`load average after: ${loadAverages()}`);
  } finally {
    await stack.cleanup();
  }
}

function latency(load: LoadResult, from: 'due' | 'sent') {
  const out: number[] = [];
  for (let i = 0; i < load.total; i++) if (load.okFlags[i]) out.push(load.doneAt[i]! - (from === 'due' ? load.due[i]! : load.sentAt[i]!));
  return summarize(out);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench api: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
