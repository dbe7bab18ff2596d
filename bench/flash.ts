/**
 * Flash-call load: POST /v1/verify (or the in-process producer, `--via queue`)
 * at an open-loop rate → BullMQ → worker → INVITE → 180 → CANCEL → 487
 * against a SIPp UAS (sip-test/uas-load-ring-cancel.xml) on loopback.
 *
 *   npm run bench -- flash [--rate 200] [--duration 10] [--ring-ms 1000]
 *                          [--workers 1] [--api-procs 1] [--via http|queue]
 *                          [--sipp-ceiling] [--profile api,worker] [--keep-logs]
 *
 * Prints: requests accepted and failed by kind; calls completed (487 after the
 * engine's CANCEL) and failed by outcome; INVITEs/s seen by the UAS per
 * second; latency from the request's due time, and from its 201, to the
 * INVITE's arrival at the UAS (SIPp logs each INVITE's receipt time, joined
 * with the request via the call id of the `delivered` event); CPU and RSS per
 * process; the worker's memory every 10 s with its slope per call. With
 * `--sipp-ceiling`, SIPp then runs the same call flow as the caller
 * (sip-test/uac-load-flash.xml) at the same rate against the same UAS
 * scenario, for the hardware ceiling and the ratio.
 *
 * `--kill-worker S`: a worker crash under load. worker0 is SIGKILLed S seconds
 * into the load and started again (same config: same SIP port, same metrics
 * port) `--restart-after` seconds later. The drain then waits for every
 * accepted request's record to be final, and the report says how each ended,
 * how many never did (lost), and how many numbers got more than one INVITE
 * (dialled twice) at the UAS.
 */
import { createServer } from 'node:http';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { redisTarget } from '../src/store/redis.js';
import { parseBenchArgs } from './lib/args.js';
import { WEBHOOK_QUEUE, orderMember, orderMemberTime } from '../src/events/webhook-queue.js';
import { Keys } from '../src/store/keys.js';
import { deepMerge, scrape, startFlashverify, sumMetric, type RunningEngine } from './lib/engine.js';
import { httpClientArg, httpFirer, runOpenLoop, type FireResult, type HttpClientKind, type LoadResult } from './lib/load.js';
import { CpuWindow, formatCpu, loadAverages, machineDescription, udpReceiveBufferErrors, type WatchedProcess } from './lib/procstat.js';
import { header, line, MemorySampler } from './lib/report.js';
import { freeSipPort, readSippStats, redisPid, SIP_TEST, Stack, waitHttpOk, type Managed } from './lib/stack.js';
import { commandStats, formatPerUnit } from './lib/redis-stats.js';
import { applyPins, parsePinSpec } from './lib/pin.js';
import { formatMs, summarize, Tally } from './lib/stats.js';
import { readInvites, readInvitesPerNumber, startUas, waitUasUp } from './lib/uas.js';

const USAGE = `npm run bench -- flash [options]
  --rate N           verifications per second, open loop (default 200, max 10000)
  --duration S       seconds of load (default 10, max 900; 600 = the memory soak)
  --ring-ms MS       flash.ringMs: ring time before CANCEL (default 1000)
  --workers N        --role worker processes (default 1)
  --api-procs N      --role api processes, requests spread round-robin (default 1)
  --combined         the --workers processes run --role all (api and worker in one, as npm start does) and take
                     the requests themselves, round-robin; no --role api process
  --via http|queue   HTTP API (default) or straight into BullMQ with the in-process producer
  --connections N    keep-alive connections per api process (default 64)
  --client raw|node  the generator's HTTP client: raw (default, bench/lib/raw-http.ts) or node:http
  --trunk-limits cluster|process
                     sip.trunkLimits (default cluster, the engine's default): cps and max-calls are the trunk's
                     across the workers (counted in Redis), or each worker's own
  --cps N            sip.trunks[].cps (default: 2 × rate; with --trunk-limits process, 2 × rate / workers)
  --max-calls N      sip.trunks[].maxCalls, the trunk's channel limit (default: none); the report then shows the
                     most calls held and waiting at once over the workers (flashverify_trunk_calls, _waiting), sampled
  --concurrency N    worker.flashConcurrency (default: enough for rate × (ring + 1 s) × 1.5 per worker)
  --log-level L      engine log level (default warn: one info line per request costs CPU at load)
  --sipp-ceiling     afterwards, SIPp as the caller with the same flow and rate (uac-load-flash.xml)
  --sipp-rates LIST  rates for that SIPp run (default: --rate), e.g. 2000,4000
  --sipp-only        only the SIPp ceiling runs (no engine)
  --profile ROLES    run api and/or worker under node --cpu-prof (profiles kept with the logs)
  --redis-stats      print Redis commands per accepted request over the run (INFO commandstats, whole server)
  --webhooks         the bench account gets a webhook URL (a receiver in this process, on loopback, answering 200):
                     sent and delivered webhooks for every call; the drain also waits for them (at most 30 s)
  --webhook-procs N  with --webhooks: N \`--role webhooks\` processes send them (webhooks.inWorkers false), not the workers
  --webhook-nice N   niceness of those processes (0-19, default 0), as \`nice -n N\` or systemd's Nice= would set it
  --kill-worker S    SIGKILL worker0 S seconds into the load, start it again --restart-after seconds later (default 2);
                     the report says how every accepted request ended, how many never did, and numbers dialled twice.
                     Lock and stall timings are shortened (worker.lockDurationMs 10 s, stalledIntervalMs 5 s,
                     events.claimIdleMs 10 s) so the dead worker's jobs and events are taken over within the drain
  --restart-after S  with --kill-worker: seconds from the kill to the new worker0 (default 2)
  --pin SPEC         CPU affinity once the processes are up (taskset -a -cp), space-separated name=cpus, e.g.
                     "api0=0 worker0=0 worker1=1 sipp=1 redis=1 bench=0"; names: api<i>, worker<i>, webhooks<i>,
                     sipp, redis (the shared one: its affinity is given back at the end), bench (the generator)
  --node-args ARGS   node options for every engine process, space-separated (e.g. "--max-semi-space-size=64")
  --config-json JSON engine config laid over the generated one, e.g. '{"fraud":{"rangeHealth":{"enabled":false}}}'
  --keep-logs        keep the temp directory (configs, logs, SIPp files)
  --use-dist         run ./dist as built (default: a tsc snapshot of src/ in the temp directory)
  --app DIR          run a snapshot kept by an earlier run (its temp directory's app/)
  --redis-url URL    default redis://127.0.0.1:6379`;

interface FlashOpts {
  rate: number;
  duration: number;
  ringMs: number;
  workers: number;
  apiProcs: number;
  combined: boolean;
  via: string;
  connections: number;
  client: HttpClientKind;
  cps: number;
  maxCalls: number | undefined;
  trunkLimits: 'cluster' | 'process';
  concurrency: number;
  logLevel: string;
  nodeArgs: string[];
  configJson: Record<string, unknown>;
  sippCeiling: boolean;
  sippOnly: boolean;
  sippRates: number[];
  profile: string[];
  redisStats: boolean;
  webhooks: boolean;
  webhookProcs: number;
  webhookNice: number;
  /** Seconds into the load at which worker0 is SIGKILLed; undefined: no crash. */
  killWorker: number | undefined;
  restartAfter: number;
  keepLogs: boolean;
  useDist: boolean;
  app: string | undefined;
  redisUrl: string;
  pin: Map<string, string>;
}

async function main(): Promise<void> {
  const a = parseBenchArgs(process.argv.slice(2), {
    rate: { type: 'string', default: '200' },
    duration: { type: 'string', default: '10' },
    'ring-ms': { type: 'string', default: '1000' },
    workers: { type: 'string', default: '1' },
    'api-procs': { type: 'string', default: '1' },
    combined: { type: 'boolean' },
    via: { type: 'string', default: 'http' },
    connections: { type: 'string', default: '64' },
    client: { type: 'string', default: 'raw' },
    cps: { type: 'string' },
    'max-calls': { type: 'string' },
    'trunk-limits': { type: 'string', default: 'cluster' },
    concurrency: { type: 'string' },
    'log-level': { type: 'string', default: 'warn' },
    'node-args': { type: 'string', default: '' },
    'config-json': { type: 'string', default: '{}' },
    'sipp-ceiling': { type: 'boolean' },
    'sipp-rates': { type: 'string' },
    'sipp-only': { type: 'boolean' },
    profile: { type: 'string' },
    'redis-stats': { type: 'boolean' },
    webhooks: { type: 'boolean' },
    'webhook-procs': { type: 'string', default: '0' },
    'webhook-nice': { type: 'string', default: '0' },
    'kill-worker': { type: 'string' },
    'restart-after': { type: 'string', default: '2' },
    'keep-logs': { type: 'boolean' },
    'use-dist': { type: 'boolean' },
    app: { type: 'string' },
    'redis-url': { type: 'string', default: 'redis://127.0.0.1:6379' },
    pin: { type: 'string', default: '' },
  });
  if (a.help) return line(USAGE);
  const rate = a.num('rate', 1, 10_000);
  const workers = a.num('workers', 1, 8);
  const ringMs = a.num('ring-ms', 0, 10_000);
  const trunkLimits = a.str('trunk-limits');
  if (trunkLimits !== 'cluster' && trunkLimits !== 'process') throw new Error(`--trunk-limits: cluster or process, not ${trunkLimits}`);
  const configJson = parseConfigJson(a.str('config-json'));
  configJson.sip = { ...((configJson.sip as object | undefined) ?? {}), trunkLimits };
  const o: FlashOpts = {
    rate,
    duration: a.num('duration', 1, 900),
    ringMs,
    workers,
    apiProcs: a.num('api-procs', 1, 8),
    combined: a.bool('combined'),
    via: a.str('via'),
    connections: a.num('connections', 1, 1024),
    client: httpClientArg(a.str('client')),
    // Headroom over the offered rate: a token bucket paced at exactly the arrival rate never
    // drains a backlog (one start-up stall would delay every later call by the same amount).
    cps: a.str('cps') ? a.num('cps', 1, 100_000) : Math.ceil((2 * rate) / (trunkLimits === 'process' ? workers : 1)),
    trunkLimits,
    maxCalls: a.str('max-calls') ? a.num('max-calls', 1, 100_000) : undefined,
    concurrency: a.str('concurrency')
      ? a.num('concurrency', 1, 100_000)
      : Math.max(500, Math.ceil((rate / workers) * (ringMs / 1000 + 1) * 1.5)),
    logLevel: a.str('log-level'),
    nodeArgs: a.str('node-args').split(' ').filter(Boolean),
    configJson,
    sippCeiling: a.bool('sipp-ceiling') || a.bool('sipp-only'),
    sippOnly: a.bool('sipp-only'),
    sippRates: a.list('sipp-rates').map(Number),
    profile: a.list('profile'),
    redisStats: a.bool('redis-stats'),
    webhooks: a.bool('webhooks'),
    webhookProcs: a.num('webhook-procs', 0, 4),
    webhookNice: a.num('webhook-nice', 0, 19),
    killWorker: a.str('kill-worker') ? a.num('kill-worker', 0, 900) : undefined,
    restartAfter: a.num('restart-after', 0, 60),
    keepLogs: a.bool('keep-logs') || a.list('profile').length > 0,
    useDist: a.bool('use-dist'),
    app: a.str('app') || undefined,
    redisUrl: a.str('redis-url'),
    pin: parsePinSpec(a.str('pin')),
  };
  if (o.via !== 'http' && o.via !== 'queue') throw new Error('--via must be http or queue');
  if (o.webhookProcs > 0 && !o.webhooks) throw new Error('--webhook-procs needs --webhooks');
  if (o.webhookNice > 0 && !o.webhookProcs) throw new Error('--webhook-nice needs --webhook-procs');
  if (o.killWorker !== undefined && o.killWorker >= o.duration) throw new Error('--kill-worker must be less than --duration (seconds into the load)');
  if (o.combined && o.via !== 'http') throw new Error('--combined takes its requests over HTTP (--via http)');
  if (o.combined && o.killWorker !== undefined) throw new Error('--kill-worker restarts a --role worker process; not with --combined');
  if (o.sippRates.length === 0) o.sippRates = [o.rate];
  if (o.sippRates.some((r) => !(r > 0 && r <= 20_000))) throw new Error('--sipp-rates: each from 1 to 20000');

  const stack = new Stack(o.redisUrl, o.keepLogs);
  // Start-up + load + drain + SIPp ceiling runs + teardown, with room to spare.
  stack.hardCap(o.duration * (1 + (o.sippCeiling ? o.sippRates.length : 0)) + 300);
  try {
    header(`flash: ${o.rate} calls/s for ${o.duration} s, ring ${o.ringMs} ms, ${o.combined ? `${o.workers} combined (--role all)` : `${o.workers} worker(s), ${o.apiProcs} api`}, via ${o.via}`, `npm run bench -- flash ${process.argv.slice(2).join(' ')}`);
    line(`machine: ${machineDescription()}`);
    if (!o.sippOnly) {
      stack.build(o.useDist, o.app);
      await runFlash(stack, o);
    }
    if (o.sippCeiling) for (const r of o.sippRates) await runSippCeiling(stack, r, o.duration, o.ringMs);
    line(`load average after: ${loadAverages()}`);
  } finally {
    await stack.cleanup();
  }
}

function parseConfigJson(text: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new Error(`--config-json: not JSON: ${(err as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('--config-json must be a JSON object');
  return v as Record<string, unknown>;
}

/**
 * With --kill-worker: a dead worker's jobs are re-run once their lock lapses and found by the next stalled check,
 * and its unacknowledged events are taken over after claimIdleMs; shortened from the 30 s defaults so that all of it
 * happens within the drain. --config-json still wins.
 */
const CRASH_TIMINGS = { worker: { lockDurationMs: 10_000, stalledIntervalMs: 5_000 }, events: { claimIdleMs: 10_000 } };

async function runFlash(stack: Stack, o: FlashOpts): Promise<void> {
  const crash = o.killWorker !== undefined;
  const configJson = crash ? deepMerge(CRASH_TIMINGS, o.configJson) : o.configJson;
  const uasPort = await freeSipPort();
  const uas = startUas(stack, 'uas', uasPort, o.duration + 200);
  await waitUasUp(stack, uas.m, uas.statFile);
  const hooks = o.webhooks ? await startHookReceiver() : undefined;
  const engine = await startFlashverify(stack, {
    apiProcs: o.via === 'http' && !o.combined ? o.apiProcs : 0,
    workerProcs: o.workers,
    combined: o.combined,
    webhookProcs: o.webhookProcs,
    webhookNice: o.webhookNice,
    trunkUri: `sip:127.0.0.1:${uasPort}`,
    cps: o.cps,
    maxCalls: o.maxCalls,
    flashConcurrency: o.concurrency,
    ringMs: o.ringMs,
    logLevel: o.logLevel,
    profile: o.profile,
    nodeArgs: o.nodeArgs,
    extra: o.webhooks ? { ...configJson, webhooks: { ...((configJson.webhooks as object | undefined) ?? {}), allowPrivate: true } } : configJson,
  });
  if (hooks) stack.cli(['account', 'set-webhook', engine.account.account_id, '--url', hooks.url], engine.configFile);
  line(`engine: ${engine.apis.length} api (pids ${engine.apis.map((x) => x.m.pid).join(',') || '-'}), ${engine.workers.length} worker (pids ${engine.workers.map((x) => x.m.pid).join(',')}), ${engine.webhookSenders.length} webhooks (pids ${engine.webhookSenders.map((x) => x.m.pid).join(',') || '-'}${o.webhookNice ? `, nice ${o.webhookNice}` : ''}), cps ${o.cps}${o.trunkLimits === 'process' ? '/worker' : ' for the trunk'}, flashConcurrency ${o.concurrency}, log ${o.logLevel}${o.nodeArgs.length ? `, node ${o.nodeArgs.join(' ')}` : ''}${Object.keys(configJson).length ? `, config ${JSON.stringify(configJson)}` : ''}; UAS SIPp pid ${uas.m.pid} on ${uasPort}; prefix ${stack.prefix}`);

  const { fire, close } = await makeFirer(engine, o);
  const rpid = await redisPid(o.redisUrl);
  const watched: WatchedProcess[] = [
    ...engine.apis.map((x, i) => ({ name: `api${i}`, pid: x.m.pid })),
    ...engine.workers.map((x, i) => ({ name: o.combined ? `worker${i} (all)` : `worker${i}`, pid: x.m.pid })),
    ...engine.webhookSenders.map((x, i) => ({ name: `webhooks${i}`, pid: x.m.pid })),
    { name: 'sipp uas', pid: uas.m.pid },
    ...(rpid ? [{ name: 'redis-server (shared)', pid: rpid }] : []),
    { name: 'bench (load generator)', pid: process.pid },
  ];
  if (o.pin.size) {
    const keyOf = (name: string): string => (name.startsWith('sipp') ? 'sipp' : name.startsWith('redis') ? 'redis' : name.startsWith('bench') ? 'bench' : name.split(' ')[0]!);
    const pinned = applyPins(o.pin, watched.map((w) => ({ key: keyOf(w.name), pid: w.pid })));
    stack.atCleanup(pinned.restore);
    line(`pinned (taskset -a -cp): ${pinned.summary}`);
  }
  const metricsUrls = engine.workers.map((w) => `http://127.0.0.1:${w.metricsPort}/metrics`);
  const callsEnded = async (): Promise<Map<string, number>> => {
    const all = new Map<string, number>();
    for (const u of metricsUrls) {
      // A worker killed on purpose (--kill-worker) answers nothing until it is started again; its counts died with it.
      const m = await scrape(u).catch((err: Error) => (crash ? new Map<string, number>() : Promise.reject(err)));
      for (const [k, v] of m) all.set(k, (all.get(k) ?? 0) + v);
    }
    return all;
  };
  // The worker that is not killed (the last one): one sampled across a crash would show a restart, not a trend.
  const sampled = crash ? engine.workers.length - 1 : 0;
  const mem = new MemorySampler(
    engine.workers[sampled]!.m.pid,
    async () => {
      const m = await scrape(metricsUrls[sampled]!);
      return { heapBytes: sumMetric(m, 'nodejs_heap_size_used_bytes'), calls: sumMetric(m, 'flashverify_calls_total') };
    },
    10_000,
  );

  line(`load: ${o.rate}/s for ${o.duration} s = ${Math.floor(o.rate * o.duration)} requests`);
  // --max-calls: the channels in use and the calls waiting for one, over the workers and in one, every 500 ms.
  const channels = { held: 0, waiting: 0, heldInOne: 0 };
  const channelTimer =
    o.maxCalls === undefined
      ? undefined
      : setInterval(() => {
          void Promise.all(metricsUrls.map((u) => scrape(u).catch(() => new Map<string, number>()))).then((all) => {
            const held = all.map((m) => sumMetric(m, 'flashverify_trunk_calls', 'trunk="bench"'));
            channels.held = Math.max(channels.held, held.reduce((x, y) => x + y, 0));
            channels.heldInOne = Math.max(channels.heldInOne, ...held);
            channels.waiting = Math.max(channels.waiting, all.reduce((x, m) => x + sumMetric(m, 'flashverify_trunk_calls_waiting', 'trunk="bench"'), 0));
          });
        }, 500);
  const cpuT0 = performance.now();
  const loadStartEpochMs = Date.now();
  const udpDropsBefore = udpReceiveBufferErrors();
  const statsRedis = o.redisStats ? new Redis(redisTarget(o.redisUrl), { maxRetriesPerRequest: 1 }) : undefined;
  const statsBefore = statsRedis ? await commandStats(statsRedis) : undefined;
  const cpu = new CpuWindow(watched);
  mem.start();
  const crashed = crash ? scheduleCrash(stack, engine, o.killWorker!, o.restartAfter) : undefined;
  const load = await runOpenLoop({
    rate: o.rate,
    durationSeconds: o.duration,
    maxRequests: 1_000_000,
    maxInFlight: 20_000,
    drainMs: 15_000,
    fire,
    onProgress: (p) => {
      if (Math.round(p.elapsedMs / 1000) % 5 === 0) line(`  t=${(p.elapsedMs / 1000).toFixed(0)} s sent ${p.sent} accepted ${p.ok} failed ${p.failed} in flight ${p.inFlight}`);
    },
  });
  close();
  // With a crash: until every accepted request's record is final (the dead worker's jobs re-run after their lock
  // lapsed), bounded. The metrics drain below then finds the killed worker's counts gone and ends at its deadline.
  const outcome = crashed ? await waitFinal(o.redisUrl, stack.prefix, load.requestIds, o.ringMs + 90_000) : undefined;
  // Calls still ringing: wait until every accepted request's call has ended (ring + 64·T1 for a lost 487, bounded).
  const drainUntil = Date.now() + (crashed ? 0 : o.ringMs + 40_000);
  let ended = 0;
  while (Date.now() < drainUntil) {
    ended = sumMetric(await callsEnded(), 'flashverify_calls_total');
    if (ended >= load.ok) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  // Webhooks: every accepted request's `sent`, and `delivered` for every call that rang (bounded wait). After a crash
  // the killed worker's call counts are gone: the records say how many rang.
  const rang = outcome ? (outcome.byStatus.entries().find(([k]) => k === 'delivered')?.[1] ?? 0) : ended;
  // After a crash, later webhooks of a request wait for earlier ones the dead worker held (reclaimed after claimIdleMs,
  // then order polls that back off): up to 120 s, while they still arrive.
  const hooksUntil = Date.now() + (crashed ? 120_000 : 30_000);
  // Requests heard of, not webhooks received: a duplicate must not end the wait before a late one arrives.
  while (hooks && Date.now() < hooksUntil && hooks.requests('verification.sent') + hooks.requests('verification.delivered') < load.ok + rang) {
    await new Promise((r) => setTimeout(r, 250));
  }
  const loadEndedMs = performance.now();
  const usage = cpu.finish();
  const statsLines = statsRedis && statsBefore ? formatPerUnit(statsBefore, await commandStats(statsRedis), load.ok, 'accepted request', ' (whole server)') : [];
  statsRedis?.disconnect();
  const udpDrops = udpReceiveBufferErrors() - udpDropsBefore;
  mem.stop();
  const metrics = await callsEnded();
  if (channelTimer) clearInterval(channelTimer);
  await new Promise((r) => setTimeout(r, 300));
  await stack.stop(uas.m);
  const sippStats = readSippStats(uas.statFile);

  // --- report
  line();
  line(`requests: ${load.sent} sent, ${load.ok} accepted (201), failed: ${load.failures.toString()}`);
  line(`  achieved accept rate ${(load.ok / o.duration).toFixed(0)}/s over the ${o.duration} s schedule; last answer at ${(load.elapsedMs / 1000).toFixed(2)} s`);
  line(`  request latency from due time: ${formatMs(requestLatency(load, 'due'))}`);
  line(`  request latency from send:     ${formatMs(requestLatency(load, 'sent'))}`);
  line(`  send lag (sent − due):         ${formatMs(sendLag(load))}`);

  const outcomes = new Tally();
  for (const [k, v] of metrics) {
    if (!k.startsWith('flashverify_calls_total{')) continue;
    outcomes.add(/outcome="([^"]+)"/.exec(k)?.[1] ?? '?', v);
  }
  const cancelled = sumMetric(metrics, 'flashverify_calls_total', 'outcome="cancelled"');
  const started = sumMetric(metrics, 'flashverify_calls_started_total');
  const failedCalls = outcomes.total - cancelled;
  line(`calls: ${started} INVITEs sent by the engine, ${outcomes.total} ended: ${outcomes.toString()}`);
  const mean = (name: string, frag: string): string => {
    const c = sumMetric(metrics, `${name}_count`, frag);
    return c ? `${((sumMetric(metrics, `${name}_sum`, frag) / c) * 1000).toFixed(1)} ms` : '-';
  };
  line(`  worker means: job latency (queued → processing) ${mean('flashverify_job_latency_seconds', 'queue="flash"')}, post-dial delay (INVITE → 180) ${mean('flashverify_post_dial_delay_seconds', '')}`);
  line(`  accepted but no call ended by the drain deadline: ${crashed ? "- (the killed worker's counts died with it: see the crash lines below)" : Math.max(0, load.ok - outcomes.total)}`);
  line(`  completed (487 after CANCEL) ${cancelled}: ${(cancelled / o.duration).toFixed(0)} calls/s over the ${o.duration} s schedule; failed calls: ${failedCalls}`);
  if (o.maxCalls !== undefined) {
    const left = { held: sumMetric(metrics, 'flashverify_trunk_calls', 'trunk="bench"'), waiting: sumMetric(metrics, 'flashverify_trunk_calls_waiting', 'trunk="bench"') };
    line(
      `  channels (maxCalls ${o.maxCalls}, ${o.trunkLimits === 'cluster' ? 'for the trunk across the workers' : 'per worker'}): at most ${channels.held} held over the workers (${channels.heldInOne} in one) and ${channels.waiting} waiting (sampled every 500 ms); after the drain ${left.held} held, ${left.waiting} waiting`,
    );
  }

  // Join: request → delivered event (call id) → INVITE receipt at the UAS.
  const invites = readInvites(uas.logFile);
  const byCall = await deliveredCallIds(o.redisUrl, stack.prefix);
  const failedEvents = byCall.failed;
  const idx = new Map<string, number>();
  load.requestIds.forEach((id, i) => id && idx.set(id, i));
  const fromDue: number[] = [];
  const from201: number[] = [];
  // From the 201, by the second of the schedule the request was due in: a steady tail or bursts.
  const from201BySecond: number[][] = [];
  for (const [rid, callId] of byCall.delivered) {
    const i = idx.get(rid);
    const at = invites.get(callId);
    if (i === undefined || at === undefined) continue;
    fromDue.push(at - (load.startEpochMs + load.due[i]!));
    const after201 = at - (load.startEpochMs + load.doneAt[i]!);
    from201.push(after201);
    (from201BySecond[Math.floor(load.due[i]! / 1000)] ??= []).push(after201);
  }
  line(`  failure events: ${failedEvents.toString()}`);
  line(`accept → INVITE at the UAS (${fromDue.length} calls joined of ${load.ok}):`);
  line(`  from the request's due time: ${formatMs(summarize(fromDue))}`);
  line(`  from the 201 at the client:  ${formatMs(summarize(from201))}  (negative: the INVITE left before the 201 arrived)`);
  if (from201BySecond.length > 1) {
    const p99s = [...from201BySecond].map((xs) => (xs?.length ? summarize(xs).p99.toFixed(0) : '-'));
    line(`  from the 201, p99 in each second of the schedule (ms): ${p99s.join(' ')}`);
  }
  const perSecond = new Map<number, number>();
  for (const at of invites.values()) {
    const s = Math.floor((at - load.startEpochMs) / 1000);
    perSecond.set(s, (perSecond.get(s) ?? 0) + 1);
  }
  const full = [...Array(Math.max(0, o.duration - 1)).keys()].map((s) => perSecond.get(s + 1) ?? 0);
  if (full.length) {
    line(`INVITEs/s at the UAS, whole seconds 1..${o.duration - 1} of the schedule: min ${Math.min(...full)} mean ${(full.reduce((x, y) => x + y, 0) / full.length).toFixed(0)} max ${Math.max(...full)}`);
  }
  if (sippStats) {
    line(`SIPp UAS: ${sippStats['IncomingCall(C)']} calls in, ${sippStats['SuccessfulCall(C)']} successful, ${sippStats['FailedCall(C)']} failed, ${sippStats['Retransmissions(C)']} retransmissions, ${sippStats['DeadCallMsgs(C)']} dead-call msgs, ${sippStats['OutOfCallMsgs(C)']} out-of-call msgs`);
  }
  const wall = (loadEndedMs - cpuT0) / 1000;
  if (hooks) {
    line(`webhooks received: ${[...hooks.byEvent].map(([e, n]) => `${e} ${n}`).join(', ') || 'none'} (${hooks.total} in all; receiver in the bench process)`);
    // Per request: every accepted one's `sent`, and `delivered` for each with a delivered event in the stream.
    const accepted = load.requestIds.filter((x): x is string => !!x);
    const missingSent = accepted.filter((id) => !hooks.received('verification.sent', id)).length;
    const missingDelivered = [...byCall.delivered.keys()].filter((id) => !hooks.received('verification.delivered', id)).length;
    const left = await webhookJobsLeft(o.redisUrl, stack.prefix);
    line(`  webhook jobs left in the queue: ${left}`);
    if (hooks.total) {
      // The stream entry id's first part is the time the event was written: lag from there to the receiver.
      line(`  from the event written to the webhook received: ${formatMs(summarize(hooks.lagsMs))}`);
      const first = (hooks.firstAtMs - loadStartEpochMs) / 1000;
      const last = (hooks.lastAtMs - loadStartEpochMs) / 1000;
      line(`  received from t=${first.toFixed(2)} s to t=${last.toFixed(2)} s (schedule ${o.duration} s): ${(hooks.total / Math.max(0.001, last - first)).toFixed(0)} webhooks/s over that span`);
    }
    line(`  per request: **${missingSent} accepted without a \`sent\` webhook, ${missingDelivered} delivered without a \`delivered\` one**; ${hooks.duplicates} received more than once (at-least-once: a delivery retried after its answer was lost or its sender died)`);
    hooks.close();
  }
  if (crashed && outcome) {
    const c = await crashed;
    line(`worker crash: worker0 (pid ${c.killedPid}) SIGKILLed at t=${c.killedAtS.toFixed(1)} s; started again (pid ${c.restarted?.pid ?? '-'}) at t=${c.restartedAtS?.toFixed(1) ?? '-'} s, ready at t=${c.readyAtS?.toFixed(1) ?? 'never'} s`);
    line(`  accepted requests by status after the drain (${(outcome.waitedMs / 1000).toFixed(1)} s after the load): ${outcome.byStatus.toString()}`);
    line(`  failed, by reason: ${outcome.failedBy.toString()}`);
    line(`  **never final (lost): ${outcome.notFinal}**${outcome.notFinal ? ` e.g. ${outcome.notFinalIds.slice(0, 5).join(', ')}` : ''}`);
    const perNumber = readInvitesPerNumber(uas.logFile);
    const twice = [...perNumber.values()].filter((n) => n > 1).length;
    line(`  numbers dialled more than once (INVITEs with distinct Call-IDs at the UAS): **${twice}** of ${perNumber.size} numbers called`);
    line('  (calls ringing in the killed worker got no CANCEL: SIPp was still waiting for it, up to 60 s, when the bench stopped it: calls in, not successful)');
    line(`  CPU: worker0's line is the killed process's; the new one's (pid ${c.restarted?.pid ?? '-'}) is not counted`);
  }
  line(`UDP datagrams dropped on full receive buffers during the run (whole machine): ${udpDrops}`);
  line(`CPU over the run (${wall.toFixed(1)} s of load + drain), % of one core:`);
  line(formatCpu(usage));
  const engineCpu = usage.procs.filter((p) => p.name.startsWith('api') || p.name.startsWith('worker') || p.name.startsWith('webhooks'));
  if (cancelled > 0 && !crashed) {
    const ms = engineCpu.reduce((s, p) => s + (p.cpuPercent / 100) * wall, 0) * 1000;
    line(`  engine CPU per completed call: ${(ms / cancelled).toFixed(3)} ms (api + worker + webhooks processes)`);
  }
  const senders = usage.procs.filter((p) => p.name.startsWith('webhooks'));
  if (hooks?.total && senders.length) {
    const ms = senders.reduce((s, p) => s + (p.cpuPercent / 100) * wall, 0) * 1000;
    line(`  webhooks processes' CPU per webhook received: ${(ms / hooks.total).toFixed(3)} ms`);
  }
  for (const l of mem.report(`worker${sampled} memory`)) line(l);
  for (const l of statsLines) line(l);
  if (o.profile.length) line(`cpu profiles: ${engine.profileDir} (written when the processes exit)`);
}

/** The webhook queue's jobs not completed (waiting, active, delayed, failed), as one line. */
async function webhookJobsLeft(redisUrl: string, prefix: string): Promise<string> {
  const { Queue } = await import('bullmq');
  const connection = new Redis(redisTarget(redisUrl), { maxRetriesPerRequest: null });
  const queue = new Queue(WEBHOOK_QUEUE, { connection, prefix: new Keys(prefix).bullPrefix() });
  try {
    const c = await queue.getJobCounts('waiting', 'active', 'delayed', 'failed');
    return Object.entries(c).map(([k, v]) => `${k} ${v}`).join(', ');
  } finally {
    await queue.close();
    connection.disconnect();
  }
}

interface Crash {
  killedPid: number;
  killedAtS: number;
  restarted?: Managed;
  restartedAtS?: number;
  readyAtS?: number;
}

/** SIGKILLs worker0 `atS` seconds from now, starts it again `restartAfterS` later; resolves once it is ready (or never was, 60 s). */
function scheduleCrash(stack: Stack, engine: RunningEngine, atS: number, restartAfterS: number): Promise<Crash> {
  const t0 = performance.now();
  const since = (): number => (performance.now() - t0) / 1000;
  const w = engine.workers[0]!;
  return new Promise<Crash>((resolve) => {
    setTimeout(() => {
      w.m.child.kill('SIGKILL');
      const c: Crash = { killedPid: w.m.pid, killedAtS: since() };
      line(`  t=${c.killedAtS.toFixed(1)} s worker0 pid ${c.killedPid} SIGKILLed`);
      setTimeout(() => {
        // Same config file: the same SIP and metrics ports, free since the kill.
        c.restarted = stack.startEngine('worker0-restarted', 'worker', w.configFile, w.nodeArgs.filter((x) => !x.startsWith('--cpu-prof')));
        c.restartedAtS = since();
        waitHttpOk(`http://127.0.0.1:${w.metricsPort}/readyz`, c.restarted, 60_000, () => stack.tail(c.restarted!))
          .then(() => {
            c.readyAtS = since();
            line(`  t=${c.readyAtS.toFixed(1)} s worker0 started again, pid ${c.restarted!.pid}, ready`);
          })
          .catch((err: Error) => line(`  worker0 did not come back: ${err.message}`))
          .finally(() => resolve(c));
      }, restartAfterS * 1000);
    }, atS * 1000);
  });
}

/** A flash request that has not ended yet: not called, or called with no outcome written. */
const NOT_FINAL = new Set(['sent']);

/** Reads every accepted request's status until none is `sent`, or `boundMs`; how they ended. */
async function waitFinal(
  redisUrl: string,
  prefix: string,
  requestIds: readonly (string | undefined)[],
  boundMs: number,
): Promise<{ byStatus: Tally; failedBy: Tally; notFinal: number; notFinalIds: string[]; waitedMs: number }> {
  const keys = new Keys(prefix);
  const ids = requestIds.filter((x): x is string => !!x);
  const redis = new Redis(redisTarget(redisUrl), { maxRetriesPerRequest: 1 });
  const t0 = Date.now();
  try {
    for (;;) {
      const byStatus = new Tally();
      const failedBy = new Tally();
      const notFinalIds: string[] = [];
      for (let i = 0; i < ids.length; i += 5000) {
        const chunk = ids.slice(i, i + 5000);
        const p = redis.pipeline();
        for (const id of chunk) p.hmget(keys.verification(id), 'status', 'failure_reason');
        const rows = (await p.exec()) ?? [];
        rows.forEach(([err, v], j) => {
          const [status, reason] = (err ? [] : (v as (string | null)[])) as (string | null)[];
          byStatus.add(status ?? '(no record)');
          if (status === 'failed') failedBy.add(reason ?? '?');
          if (!status || NOT_FINAL.has(status)) notFinalIds.push(chunk[j]!);
        });
      }
      const waitedMs = Date.now() - t0;
      if (notFinalIds.length === 0 || waitedMs > boundMs) return { byStatus, failedBy, notFinal: notFinalIds.length, notFinalIds, waitedMs };
      await new Promise((r) => setTimeout(r, 2000));
    }
  } finally {
    redis.disconnect();
  }
}

async function makeFirer(engine: RunningEngine, o: FlashOpts): Promise<{ fire(i: number): Promise<FireResult>; close(): void }> {
  // Every request a new destination (a pending verification blocks another to the same number; the CLI cooldown is per destination).
  let seq = 0;
  const phone = (_i: number): string => `+4474${String((seq++ * 7919 + process.pid * 104_729) % 100_000_000).padStart(8, '0')}`;
  if (o.via === 'http') {
    return httpFirer({
      targets: engine.httpPorts.map((port) => ({ host: '127.0.0.1', port })),
      path: '/v1/verify',
      headers: { authorization: `Basic ${Buffer.from(`${engine.account.api_key}:${engine.account.api_secret}`).toString('base64')}` },
      body: (i) => `{"phone_number":"${phone(i)}","method":"flash_call"}`,
      expectStatus: 201,
      connections: o.connections,
      timeoutMs: 10_000,
      wantRequestId: true,
      client: o.client,
    });
  }
  const { FlashVerifyProducer, ApiError } = await import('../src/producer.js');
  const producer = await FlashVerifyProducer.connect({ configFile: engine.configFile, methods: ['flash_call'] });
  const who = { accountId: engine.account.account_id };
  return {
    fire: async (i) => {
      try {
        const r = await producer.createVerification(who, { phone_number: phone(i), method: 'flash_call' });
        return { ok: true, requestId: r.request_id };
      } catch (err) {
        return { ok: false, kind: err instanceof ApiError ? `producer ${err.code}` : err instanceof Error ? err.message : String(err) };
      }
    },
    close: () => void producer.close(),
  };
}

function requestLatency(load: LoadResult, from: 'due' | 'sent') {
  const out: number[] = [];
  for (let i = 0; i < load.total; i++) {
    if (!load.okFlags[i]) continue;
    out.push(load.doneAt[i]! - (from === 'due' ? load.due[i]! : load.sentAt[i]!));
  }
  return summarize(out);
}

function sendLag(load: LoadResult) {
  const out: number[] = [];
  for (let i = 0; i < load.total; i++) if (!Number.isNaN(load.sentAt[i]!)) out.push(load.sentAt[i]! - load.due[i]!);
  return summarize(out);
}

/** From the events stream: request id → call id of its `delivered` event; failed events by reason. */
async function deliveredCallIds(redisUrl: string, prefix: string): Promise<{ delivered: Map<string, string>; failed: Tally }> {
  const redis = new Redis(redisTarget(redisUrl), { maxRetriesPerRequest: 1 });
  const delivered = new Map<string, string>();
  const failed = new Tally();
  try {
    let start = '-';
    for (;;) {
      const batch = await redis.xrange(`${prefix}:events`, start, '+', 'COUNT', 10_000);
      for (const [, f] of batch) {
        const h: Record<string, string> = {};
        for (let k = 0; k + 1 < f.length; k += 2) h[f[k]!] = f[k + 1]!;
        const detail = JSON.parse(h.detail ?? '{}') as Record<string, unknown>;
        if (h.status === 'delivered' && h.request_id && typeof detail.call_id === 'string') delivered.set(h.request_id, detail.call_id);
        if (h.status === 'failed') failed.add(String(detail.reason ?? 'unknown'));
      }
      if (batch.length < 10_000) break;
      start = `(${batch[batch.length - 1]![0]}`;
    }
  } finally {
    redis.disconnect();
  }
  return { delivered, failed };
}

/** SIPp as the caller (uac-load-flash) against uas-load-ring-cancel, same rate and ring time: the ceiling. */
async function runSippCeiling(stack: Stack, rate: number, duration: number, ringMs: number): Promise<void> {
  line();
  line(`== SIPp ceiling: uac-load-flash → uas-load-ring-cancel, ${rate} calls/s for ${duration} s, ring ${ringMs} ms`);
  line(`load average before: ${loadAverages()}`);
  const port = await freeSipPort();
  const name = `ceiling${rate}`;
  const uas = startUas(stack, `${name}-uas`, port, duration + 120);
  await waitUasUp(stack, uas.m, uas.statFile);
  const calls = Math.floor(rate * duration);
  const uacStat = join(stack.dir, `${name}-uac-stat.csv`);
  const uac = stack.spawnManaged(`${name}-uac`, 'sipp', [
    '-sf', join(SIP_TEST, 'uac-load-flash.xml'), '-t', 'u1', '-i', '127.0.0.1', '-mi', '127.0.0.1', '-ci', '127.0.0.1',
    '-s', '447400000000', '-d', String(ringMs), '-r', String(rate), '-m', String(calls),
    '-l', String(Math.ceil(rate * (ringMs / 1000 + 2) * 2)), '-buff_size', '4194304', '-nostdin',
    '-trace_stat', '-stf', uacStat, '-fd', '1', '-trace_err', '-error_file', join(stack.dir, `${name}-uac-errors.log`),
    '-timeout', `${duration + 60}s`, `127.0.0.1:${port}`,
  ]);
  const started = performance.now();
  const startEpoch = performance.timeOrigin + started;
  const cpu = new CpuWindow([{ name: 'sipp uac (caller)', pid: uac.pid }, { name: 'sipp uas', pid: uas.m.pid }]);
  const hard = setTimeout(() => uac.child.kill('SIGKILL'), (duration + 90) * 1000);
  const code = await uac.exited;
  clearTimeout(hard);
  const usage = cpu.finish();
  await stack.stop(uas.m);
  const st = readSippStats(uacStat);
  const invites = readInvites(uas.logFile);
  const perSecond = new Map<number, number>();
  for (const at of invites.values()) {
    const s = Math.floor((at - startEpoch) / 1000);
    perSecond.set(s, (perSecond.get(s) ?? 0) + 1);
  }
  const full = [...Array(Math.max(0, duration - 1)).keys()].map((s) => perSecond.get(s + 1) ?? 0);
  const ok = Number(st?.['SuccessfulCall(C)'] ?? 0);
  line(`SIPp UAC exit ${code}: ${st?.['OutgoingCall(C)']} calls placed, ${ok} successful, ${st?.['FailedCall(C)']} failed, ${st?.['Retransmissions(C)']} retransmissions, in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  line(`  completed ${(ok / duration).toFixed(0)} calls/s over the ${duration} s schedule`);
  if (full.length) {
    line(`  INVITEs/s at the UAS, seconds 1..${duration - 1}: min ${Math.min(...full)} mean ${(full.reduce((x, y) => x + y, 0) / full.length).toFixed(0)} max ${Math.max(...full)}`);
  }
  line(formatCpu(usage));
  const uacCpu = usage.procs.find((p) => p.name.startsWith('sipp uac'));
  if (uacCpu && ok > 0) {
    const wall = (performance.now() - started) / 1000;
    line(`  SIPp caller CPU per completed call: ${(((uacCpu.cpuPercent / 100) * wall * 1000) / ok).toFixed(3)} ms`);
  }
  line(`load average after: ${loadAverages()}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench flash: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);

/** A webhook endpoint on loopback that answers 200 at once and counts what it gets, by event and by request. */
async function startHookReceiver(): Promise<{
  url: string;
  byEvent: Map<string, number>;
  total: number;
  /** Webhooks of one event and request received more than once, beyond the first. */
  duplicates: number;
  count(event: string): number;
  /** Distinct requests that got a webhook of `event`. */
  requests(event: string): number;
  received(event: string, requestId: string): boolean;
  close(): void;
  /** Per webhook: ms from its event's stream entry (X-FlashVerify-Event-Id) to its arrival here. */
  lagsMs: number[];
  firstAtMs: number;
  lastAtMs: number;
}> {
  const lagsMs: number[] = [];
  let firstAtMs = 0;
  let lastAtMs = 0;
  const byEvent = new Map<string, number>();
  /** `<event> <request_id>` of every webhook received. */
  const seen = new Set<string>();
  const distinct = new Map<string, number>();
  let duplicates = 0;
  let total = 0;
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      total++;
      const now = Date.now();
      if (!firstAtMs) firstAtMs = now;
      lastAtMs = now;
      const written = orderMemberTime(orderMember(String(req.headers['x-flashverify-event-id'] ?? '')));
      if (written > 0) lagsMs.push(now - written);
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString()) as { event?: unknown; request_id?: unknown };
        const event = String(body.event);
        byEvent.set(event, (byEvent.get(event) ?? 0) + 1);
        const key = `${event} ${String(body.request_id)}`;
        if (seen.has(key)) duplicates++;
        else {
          seen.add(key);
          distinct.set(event, (distinct.get(event) ?? 0) + 1);
        }
      } catch {
        byEvent.set('(unparsable)', (byEvent.get('(unparsable)') ?? 0) + 1);
      }
      res.writeHead(200).end();
    });
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  return {
    url: `http://127.0.0.1:${port}/hooks`,
    byEvent,
    get total() {
      return total;
    },
    get duplicates() {
      return duplicates;
    },
    count: (event) => byEvent.get(event) ?? 0,
    requests: (event) => distinct.get(event) ?? 0,
    received: (event, requestId) => seen.has(`${event} ${requestId}`),
    close: () => server.close(),
    lagsMs,
    get firstAtMs() {
      return firstAtMs;
    },
    get lastAtMs() {
      return lastAtMs;
    },
  };
}
