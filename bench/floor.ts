/**
 * The platform floor: what the design's mandatory parts cost per
 * verification on this machine, with nothing of flashverify's own in them.
 * `bench/floor/api.ts` (Fastify, Basic auth, one HSET, one XADD, one BullMQ
 * add) and `bench/floor/worker.ts` (a BullMQ Worker whose job is a flash
 * call's least SIP against the same SIPp UAS as the flash bench, INVITE →
 * 180 → CANCEL after the ring time → 487 → ACK, from raw strings
 * (floor/sip-leg.ts); one HSET and one XADD per job; an events consumer
 * applying every event), driven by the same open-loop HTTP generator as the
 * flash and api benchmarks. No validation, crypto, fraud controls, SIP
 * transactions or parser. `--without-sip`: the job waits out the ring time.
 *
 *   npm run bench -- floor [--rate 2000] [--duration 20] [--ring-ms 1000]
 *                          [--api-procs 1] [--workers 1] [--concurrency 3000]
 *
 * CPU per verification of this floor, beside the engine's from
 * `npm run bench -- flash` at the same rate, says how much of the engine's
 * cost is the platform (HTTP + Redis + BullMQ + the events stream) and how
 * much is its own.
 */
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { parseBenchArgs, STACK_OPTIONS, STACK_USAGE } from './lib/args.js';
import { httpFirer, runOpenLoop, type LoadResult } from './lib/load.js';
import { CpuWindow, formatCpu, loadAverages, machineDescription } from './lib/procstat.js';
import { header, line } from './lib/report.js';
import { freeSipPort, freeTcpPort, readSippStats, redisPid, ROOT, Stack, type Managed } from './lib/stack.js';
import { startUas, waitUasUp } from './lib/uas.js';
import { formatMs, summarize } from './lib/stats.js';

const USAGE = `npm run bench -- floor [options]
  --rate N           verifications per second, open loop (default 2000, max 10000)
  --duration S       seconds of load (default 20, max 120)
  --ring-ms MS       how long the worker holds each job, as a flash call rings (default 1000)
  --api-procs N      floor api processes (default 1)
  --workers N        floor worker processes (default 1; 0: enqueue only, as the API target is, and no SIPp)
  --concurrency N    BullMQ concurrency per worker (default 3000)
  --without-sip      no SIPp: each job waits out the ring time instead of calling
${STACK_USAGE}`;

async function main(): Promise<void> {
  const a = parseBenchArgs(process.argv.slice(2), {
    rate: { type: 'string', default: '2000' },
    duration: { type: 'string', default: '20' },
    'ring-ms': { type: 'string', default: '1000' },
    'api-procs': { type: 'string', default: '1' },
    workers: { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '3000' },
    'without-sip': { type: 'boolean', default: false },
    ...STACK_OPTIONS,
  });
  if (a.help) return line(USAGE);
  const rate = a.num('rate', 1, 10_000);
  const duration = a.num('duration', 1, 120);
  const ringMs = a.num('ring-ms', 0, 10_000);
  const apiProcs = a.num('api-procs', 1, 8);
  const workers = a.num('workers', 0, 8);
  const concurrency = a.num('concurrency', 1, 20_000);
  const redisUrl = a.str('redis-url');
  const stack = new Stack(redisUrl, a.bool('keep-logs'));
  stack.hardCap(duration + 180);
  try {
    header(`floor: ${rate}/s for ${duration} s, ring ${ringMs} ms, ${apiProcs} api, ${workers} worker(s)`, `npm run bench -- floor ${process.argv.slice(2).join(' ')}`);
    line(`machine: ${machineDescription()}`);
    const tsx = ['--import', 'tsx'];
    const withSip = !a.bool('without-sip') && workers > 0;
    const uasPort = withSip ? await freeSipPort() : 0;
    const uas = withSip ? startUas(stack, 'uas', uasPort, duration + 200) : undefined;
    if (uas) await waitUasUp(stack, uas.m, uas.statFile);
    const apis: { m: Managed; port: number }[] = [];
    for (let i = 0; i < apiProcs; i++) {
      const port = await freeTcpPort();
      const m = stack.spawnManaged(`floor-api${i}`, process.execPath, [...tsx, join(ROOT, 'bench', 'floor', 'api.ts'), redisUrl, stack.prefix, String(port)], { cwd: ROOT });
      apis.push({ m, port });
    }
    const ws: Managed[] = [];
    for (let i = 0; i < workers; i++) {
      ws.push(stack.spawnManaged(`floor-worker${i}`, process.execPath, [...tsx, join(ROOT, 'bench', 'floor', 'worker.ts'), redisUrl, stack.prefix, String(ringMs), String(concurrency), ...(withSip ? [String(uasPort)] : [])], { cwd: ROOT }));
    }
    const progress = (): { done: number; applied: number; failed: number } => {
      let done = 0;
      let applied = 0;
      let failed = 0;
      for (const w of ws) {
        const m = [...readFileSync(w.logFile, 'utf8').matchAll(/(\d+) jobs done, (\d+) events applied, (\d+) calls failed/g)].at(-1);
        done += Number(m?.[1] ?? 0);
        applied += Number(m?.[2] ?? 0);
        failed += Number(m?.[3] ?? 0);
      }
      return { done, applied, failed };
    };
    const started = (m: Managed, text: string): boolean => {
      if (m.child.exitCode !== null) throw new Error(`${m.name} exited during start:\n${stack.tail(m)}`);
      return readFileSync(m.logFile, 'utf8').includes(text);
    };
    await waitFor(() => apis.every((x) => started(x.m, 'floor api listening')) && ws.every((w) => started(w, 'floor worker started')), 30_000);
    let seq = 0;
    const firer = httpFirer({
      targets: apis.map((x) => ({ host: '127.0.0.1', port: x.port })),
      path: '/v1/verify',
      headers: { authorization: `Basic ${Buffer.from('floor:secret').toString('base64')}` },
      body: () => `{"phone_number":"+4474${String(seq++).padStart(8, '0')}","method":"flash_call"}`,
      expectStatus: 201,
      connections: 64,
      timeoutMs: 10_000,
      wantRequestId: false,
    });
    await runOpenLoop({ rate: Math.min(rate, 500), durationSeconds: 2, maxRequests: 1000, maxInFlight: 5000, drainMs: 5000, fire: firer.fire });
    const rpid = await redisPid(redisUrl);
    const before = progress();
    if (workers > 0) await waitFor(() => progress().done >= before.done && progress().applied >= 2 * seq - 10, 10_000).catch(() => undefined);
    const base = progress();
    const t0 = performance.now();
    const cpu = new CpuWindow([
      ...apis.map((x, i) => ({ name: `floor api${i}`, pid: x.m.pid })),
      ...ws.map((w, i) => ({ name: `floor worker${i}`, pid: w.pid })),
      ...(rpid ? [{ name: 'redis-server', pid: rpid }] : []),
      ...(uas ? [{ name: 'sipp uas', pid: uas.m.pid }] : []),
      { name: 'bench (load generator)', pid: process.pid },
    ]);
    const load = await runOpenLoop({ rate, durationSeconds: duration, maxRequests: 1_000_000, maxInFlight: 20_000, drainMs: 15_000, fire: firer.fire });
    // Every accepted verification's job done and both of its events applied (with no worker: nothing to wait for).
    if (workers > 0) await waitFor(() => {
      const p = progress();
      return p.done - base.done >= load.ok && p.applied - base.applied >= 2 * load.ok;
    }, ringMs + 30_000).catch(() => undefined);
    const usage = cpu.finish();
    const wall = (performance.now() - t0) / 1000;
    const end = progress();
    firer.close();
    line();
    line(`requests: ${load.sent} sent, ${load.ok} accepted (201), failed: ${load.failures.toString()}`);
    line(`  accepted/s over the schedule: ${(load.ok / duration).toFixed(0)}; last answer at ${(load.elapsedMs / 1000).toFixed(2)} s`);
    line(`  latency from due time: ${formatMs(latency(load))}`);
    if (workers > 0) line(`jobs done: ${end.done - base.done}, events applied: ${end.applied - base.applied} (of ${2 * load.ok})${withSip ? `, calls failed: ${end.failed - base.failed}` : ''}`);
    if (uas) {
      const st = readSippStats(uas.statFile);
      line(`SIPp UAS (warm-up included): ${st?.['IncomingCall(C)']} calls in, ${st?.['SuccessfulCall(C)']} successful, ${st?.['FailedCall(C)']} failed, ${st?.['Retransmissions(C)']} retransmissions`);
    }
    line(`CPU over ${wall.toFixed(1)} s (load + drain), % of one core:`);
    line(formatCpu(usage));
    const ms = (names: (n: string) => boolean): string =>
      ((usage.procs.filter((p) => names(p.name)).reduce((s, p) => s + p.cpuPercent, 0) / 100) * wall * 1000 / Math.max(1, load.ok)).toFixed(3);
    line(`CPU per verification: api ${ms((n) => n.includes('api'))} ms, worker ${ms((n) => n.includes('worker'))} ms, redis ${ms((n) => n === 'redis-server')} ms, generator ${ms((n) => n.startsWith('bench'))} ms${withSip ? `, SIPp ${ms((n) => n.startsWith('sipp'))} ms` : ''}`);
    line(`load average after: ${loadAverages()}`);
  } finally {
    await stack.cleanup();
  }
}

function latency(load: LoadResult) {
  const out: number[] = [];
  for (let i = 0; i < load.total; i++) if (load.okFlags[i]) out.push(load.doneAt[i]! - load.due[i]!);
  return summarize(out);
}

async function waitFor(cond: () => boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 200));
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench floor: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
