/**
 * Voice OTP calls end to end through one worker process, for issue 7's voice
 * target ("500 concurrent embedded-media calls in one worker with no RTP
 * packet later than 5 ms"): `POST /v1/verify` with `"method": "voice"` over
 * HTTP at `--rate`, one `--role api` and one `--role worker` process of the
 * real CLI, SIPp as the far end (sip-test/uas-voice-answer.xml: 180, 200 with
 * an SDP answer after `--answer-ms`, ACK, BYE from the engine), and the RTP
 * the worker plays sent to a UDP sink in this process.
 *
 * Calls overlap: each lasts the answer delay and the announcement (456
 * packets, 9.1 s, in English), so `--rate 55` holds about 500 at once. What it prints comes from the worker itself (its
 * /metrics): RTP packets sent and those more than 5 ms late
 * (`flashverify_rtp_packets_late_total{when}`), the most RTP sessions seen at
 * once (sampled every 250 ms), voice call outcomes; beside them the packets
 * the sink got, SIPp's call counts and CPU per process.
 *
 *   npm run bench -- voice-calls [--rate 55] [--duration 30] [--answer-ms 200]
 *
 * `bench voice` measures the RTP thread alone; this one has the worker's SIP,
 * Redis and event work on its main thread beside it, as in production.
 */
import { createSocket } from 'node:dgram';
import { join } from 'node:path';
import { loadConfig } from '../src/config/load.js';
import { parseBenchArgs, STACK_OPTIONS, STACK_USAGE } from './lib/args.js';
import { scrape, startFlashverify, sumMetric } from './lib/engine.js';
import { httpFirer, runOpenLoop } from './lib/load.js';
import { CpuWindow, formatCpu, loadAverages, machineDescription } from './lib/procstat.js';
import { formatFloor, startFloorProbe } from './lib/host-floor.js';
import { startQuietSink, type QuietSink } from './lib/quiet-sink.js';
import { header, line } from './lib/report.js';
import { freeSipPort, readSippStats, redisPid, SIP_TEST, Stack } from './lib/stack.js';
import { waitUasUp } from './lib/uas.js';

const USAGE = `npm run bench -- voice-calls [options]
  --rate N           voice verifications per second, open loop (default 55: about 500 calls at once; max 200)
  --duration S       seconds of requests (default 30, max 600); calls then play out
  --answer-ms MS     SIPp answers this long after its 180 (default 200)
  --node-args "..."  node options for the engine processes (A/B of V8 flags, --trace-gc with --keep-logs)
  --sink wake|quiet  wake (default): the RTP sink reads every packet (in this process); quiet: a process that never
                     reads, so no reader is woken inside the RTP thread's sendmsg (lib/quiet-sink.ts)
${STACK_USAGE}`;

/** An announcement (the code read twice) is about 9 s; a call still not ended this long after the last request is counted as such. */
const CALL_BOUND_S = 40;

async function main(): Promise<void> {
  const a = parseBenchArgs(process.argv.slice(2), {
    rate: { type: 'string', default: '55' },
    duration: { type: 'string', default: '30' },
    'answer-ms': { type: 'string', default: '200' },
    'node-args': { type: 'string', default: '' },
    sink: { type: 'string', default: 'wake' },
    ...STACK_OPTIONS,
  });
  if (a.help) return line(USAGE);
  const rate = a.num('rate', 1, 200);
  const duration = a.num('duration', 1, 600);
  const answerMs = a.num('answer-ms', 0, 10_000);
  // Enough RTP ports and voice slots for every call that can overlap, twice over.
  const maxCalls = Math.ceil(rate * (CALL_BOUND_S / 2) * 2);
  const stack = new Stack(a.str('redis-url'), a.bool('keep-logs'));
  stack.hardCap(duration + CALL_BOUND_S + 240);
  const sinkKind = a.str('sink');
  if (sinkKind !== 'wake' && sinkKind !== 'quiet') throw new Error(`--sink must be wake or quiet, not "${sinkKind}"`);
  const sink = createSocket('udp4');
  let quiet: QuietSink | undefined;
  try {
    header(`voice-calls: ${rate}/s for ${duration} s, answer after ${answerMs} ms, 1 api, 1 worker`, `npm run bench -- voice-calls ${process.argv.slice(2).join(' ')}`);
    line(`machine: ${machineDescription()}`);
    stack.build(a.bool('use-dist'), a.str('app') || undefined);

    let received = 0;
    sink.on('message', () => void received++);
    await new Promise<void>((r) => sink.bind(0, '127.0.0.1', () => r()));
    sink.setRecvBufferSize(8 * 1024 * 1024);
    if (sinkKind === 'quiet') quiet = await startQuietSink();
    const sinkPort = quiet ? quiet.port : sink.address().port;

    const uasPort = await freeSipPort();
    const statFile = join(stack.dir, 'uas-stat.csv');
    const uas = stack.spawnManaged('uas', 'sipp', [
      '-sf', join(SIP_TEST, 'uas-voice-answer.xml'), '-t', 'u1', '-i', '127.0.0.1', '-p', String(uasPort),
      '-mi', '127.0.0.1', '-set', 'rtp_ip', '127.0.0.1', '-set', 'rtp_port', String(sinkPort), '-set', 'answer_ms', String(answerMs),
      '-buff_size', '4194304', '-nostdin', '-trace_stat', '-stf', statFile, '-fd', '1',
      '-trace_err', '-error_file', join(stack.dir, 'uas-errors.log'), '-timeout', `${duration + CALL_BOUND_S + 120}s`,
    ]);
    await waitUasUp(stack, uas, statFile);

    const engine = await startFlashverify(stack, {
      apiProcs: 1,
      workerProcs: 1,
      trunkUri: `sip:127.0.0.1:${uasPort}`,
      cps: Math.ceil(2 * rate),
      flashConcurrency: 10,
      ringMs: 1000,
      logLevel: 'warn',
      profile: [],
      nodeArgs: a.str('node-args').split(' ').filter(Boolean),
      extra: {
        worker: { voiceConcurrency: maxCalls },
        media: { rtp: { portMin: 40000, portMax: 40000 + 2 * maxCalls + 1 } },
      },
    });
    const worker = engine.workers[0]!;
    const api = engine.apis[0]!;
    line(`engine: api pid ${api.m.pid}, worker pid ${worker.m.pid} (voiceConcurrency ${maxCalls}); UAS SIPp pid ${uas.pid} on ${uasPort}; RTP sink (${sinkKind}) 127.0.0.1:${sinkPort}${quiet ? `, pid ${quiet.pid}` : ''}; prefix ${stack.prefix}`);

    const metricsUrl = `http://127.0.0.1:${worker.metricsPort}/metrics`;
    let peakSessions = 0;
    const sampler = setInterval(() => {
      scrape(metricsUrl)
        .then((m) => void (peakSessions = Math.max(peakSessions, sumMetric(m, 'flashverify_rtp_sessions'))))
        .catch(() => undefined);
    }, 250);

    let seq = 0;
    const firer = httpFirer({
      targets: [{ host: '127.0.0.1', port: api.port }],
      path: '/v1/verify',
      headers: { authorization: `Basic ${Buffer.from(`${engine.account.api_key}:${engine.account.api_secret}`).toString('base64')}` },
      // Every request a new mobile number (one live request per number).
      body: () => `{"phone_number":"+4475${String((seq++ * 7919 + process.pid * 104_729) % 100_000_000).padStart(8, '0')}","method":"voice"}`,
      expectStatus: 201,
      connections: 16,
      timeoutMs: 10_000,
      wantRequestId: false,
    });
    const rpid = await redisPid(a.str('redis-url'));
    const cpu = new CpuWindow([
      { name: 'api0', pid: api.m.pid },
      { name: 'worker0', pid: worker.m.pid },
      { name: 'sipp uas', pid: uas.pid },
      ...(rpid ? [{ name: 'redis-server (shared)', pid: rpid }] : []),
      { name: quiet ? 'bench (generator)' : 'bench (generator + RTP sink)', pid: process.pid },
    ]);
    // The host's floor in the same seconds, at the RTP thread's own priority (the worker runs the default media.rtp).
    const rtp = loadConfig({ env: {} }).media.rtp;
    const floor = startFloorProbe({ fifoPriority: rtp.realtimePriority ?? undefined, nice: rtp.threadNice ?? undefined, maxSeconds: duration + CALL_BOUND_S + 60 });
    const t0 = performance.now();
    const load = await runOpenLoop({ rate, durationSeconds: duration, maxRequests: 200_000, maxInFlight: 2_000, drainMs: 15_000, fire: firer.fire });
    firer.close();

    // Every accepted call ended (its outcome counted by the worker), or the bound.
    const ended = (metrics: Map<string, number>): number => sumMetric(metrics, 'flashverify_calls_total', 'method="voice"');
    const until = Date.now() + CALL_BOUND_S * 1000;
    while (ended(await scrape(metricsUrl)) < load.ok && Date.now() < until) await new Promise((r) => setTimeout(r, 500));
    await new Promise((r) => setTimeout(r, 500));
    clearInterval(sampler);
    const usage = cpu.finish();
    const host = await floor.stop();
    if (quiet) {
      received = await quiet.stop();
      quiet = undefined;
    }
    const wall = (performance.now() - t0) / 1000;
    const m = await scrape(metricsUrl);

    const outcomes = [...m].filter(([k, v]) => k.startsWith('flashverify_calls_total{') && k.includes('method="voice"') && v > 0).map(([k, v]) => `${/outcome="([^"]+)"/.exec(k)?.[1]} ${v}`);
    const sent = sumMetric(m, 'flashverify_rtp_packets_sent_total');
    const onWake = sumMetric(m, 'flashverify_rtp_packets_late_total', 'when="on_wake"');
    const inTurn = sumMetric(m, 'flashverify_rtp_packets_late_total', 'when="in_turn"');
    const st = readSippStats(statFile);

    line();
    line(`requests: ${load.sent} sent, ${load.ok} accepted (201), failed: ${load.failures.toString()}; last answer at ${(load.elapsedMs / 1000).toFixed(2)} s`);
    line(`voice calls ended (worker): ${outcomes.join(', ') || 'none'}; not ended within ${CALL_BOUND_S} s of the last request: ${Math.max(0, load.ok - ended(m))}`);
    line(`RTP sessions at once (worker, sampled every 250 ms): at most ${peakSessions}`);
    line(`RTP packets sent (worker): ${sent}; received by the sink: ${received}`);
    line(`RTP packets more than 5 ms late (worker): ${onWake + inTurn} (${sent ? (((onWake + inTurn) / sent) * 100).toFixed(3) : '0'} %): on_wake ${onWake}, in_turn ${inTurn}`);
    line(`host floor (cyclictest, ${rtp.realtimePriority !== null ? `SCHED_FIFO ${rtp.realtimePriority}` : `nice ${rtp.threadNice ?? 0}`}, same seconds): ${formatFloor(host)}`);
    line(`SIPp UAS: ${st?.['IncomingCall(C)']} calls in, ${st?.['SuccessfulCall(C)']} successful, ${st?.['FailedCall(C)']} failed, ${st?.['Retransmissions(C)']} retransmissions`);
    line(`CPU over ${wall.toFixed(1)} s (load + calls playing out), % of one core:`);
    line(formatCpu(usage));
    line(`load average after: ${loadAverages()}`);
  } finally {
    await quiet?.stop();
    sink.close();
    await stack.cleanup();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench voice-calls: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
