/**
 * Voice media pacing benchmark: N concurrent calls' worth of announcements
 * played by one EmbeddedMediaPlayer (one process; one UDP socket per call,
 * owned and paced by the player's RTP worker thread) to a UDP sink in a child
 * process. Reports, per
 * concurrency, how many RTP packets left more than 5 ms after their due time.
 *
 *   node --import tsx bench/voice.ts [100,300,500]
 *
 * Each call plays the real English announcement of a 6-digit code (~12 s,
 * ~600 packets). Calls start spread over one second, as a queue would start
 * them. BUSY_MS=n blocks the main thread for n ms every 100 ms, standing
 * for the rest of a worker process's work. NICE=n (default -10; `none`) and
 * RT=n (SCHED_FIFO priority; default 10; `none`) set the RTP thread as
 * media.rtp.threadNice and media.rtp.realtimePriority do. Before each row 50
 * calls of 1 s of silence warm the RTP thread's code (not counted), as in a
 * worker that has served calls. Results go to BENCHMARKS.md by hand.
 *
 * Beside each row, the host's floor from the same seconds (lib/host-floor.ts,
 * cyclictest): how often a thread that does nothing but sleep woke more than
 * 5 ms late. `late_on_wake` counts the packets that were already more than
 * 5 ms late when the RTP thread began its turn: the host had not run it, or
 * the thread's own event loop took that long between two turns (a socket bind
 * that grew the descriptor table did, before fd-table.ts).
 */
import { spawn } from 'node:child_process';
import { cpus } from 'node:os';
import { pino } from 'pino';
import { EmbeddedMediaPlayer } from '../src/media/rtp/embedded-media-player.js';
import { codeAnnouncement } from '../src/media/prompts.js';
import { startFloorProbe } from './lib/host-floor.js';

const SINK = `
const s = require('node:dgram').createSocket('udp4');
let n = 0;
s.on('message', () => n++);
s.bind(0, '127.0.0.1', () => process.send({ port: s.address().port }));
process.on('message', (m) => { if (m === 'count') process.send({ count: n }); if (m === 'exit') process.exit(0); });
`;

interface Sink {
  port: number;
  count(): Promise<number>;
  stop(): void;
}

async function startSink(): Promise<Sink> {
  const child = spawn(process.execPath, ['-e', SINK], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const port = await new Promise<number>((resolve) => child.once('message', (m: { port: number }) => resolve(m.port)));
  return {
    port,
    count: () => new Promise((resolve) => {
      child.once('message', (m: { count: number }) => resolve(m.count));
      child.send('count');
    }),
    stop: () => child.send('exit'),
  };
}

async function run(concurrency: number, sink: Sink): Promise<Record<string, string | number>> {
  const logger = pino({ level: 'silent' });
  const player = new EmbeddedMediaPlayer({
    bindHost: '127.0.0.1',
    advertisedHost: '127.0.0.1',
    portMin: 30000,
    portMax: 39999,
    threadNice: NICE,
    realtimePriority: RT,
  });
  player.prompts.preload();
  const answer = `v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio ${sink.port} RTP/AVP 0\r\n`;
  // Start the RTP worker thread and warm its code before measuring, as in a worker process that
  // has served calls: 50 calls of 1 s of silence, not counted.
  await Promise.all(
    Array.from({ length: 50 }, async () => {
      const session = await player.createSession(logger);
      session.accept(answer);
      await session.play({ language: 'en', items: [{ silenceMs: 1000 }] });
      await session.close();
    }),
  );
  Object.assign(player.stats, { packets: 0, lateOver5ms: 0, lateOnWake: 0, maxLateMs: 0 });
  const before = await sink.count();
  const floor = startFloorProbe({ fifoPriority: RT, nice: NICE });
  const cpu0 = process.cpuUsage();
  const started = performance.now();
  let lagMax = 0;
  let lastTick = performance.now();
  // BUSY_MS > 0: block the main thread that long every 100 ms (stands for signalling, HTTP, JSON, GC).
  const busyTimer =
    BUSY_MS > 0
      ? setInterval(() => {
          const until = performance.now() + BUSY_MS;
          while (performance.now() < until);
        }, 100)
      : undefined;
  const lagTimer = setInterval(() => {
    const now = performance.now();
    lagMax = Math.max(lagMax, now - lastTick - 10);
    lastTick = now;
  }, 10);
  await Promise.all(
    Array.from({ length: concurrency }, async (_, i) => {
      await new Promise((r) => setTimeout(r, (RAMP_MS * i) / concurrency));
      const session = await player.createSession(logger);
      session.accept(answer);
      await session.play(codeAnnouncement(String(100000 + ((i * 7919) % 900000)), 'en'));
      await session.close();
    }),
  );
  clearInterval(lagTimer);
  clearInterval(busyTimer);
  const cpu = process.cpuUsage(cpu0);
  const wallMs = performance.now() - started;
  const host = await floor.stop();
  await player.stop();
  await new Promise((r) => setTimeout(r, 200));
  const received = (await sink.count()) - before;
  const s = player.stats;
  return {
    concurrency,
    rtp_thread:
      player.threadRealtime?.error === undefined && player.threadRealtime
        ? `SCHED_FIFO ${player.threadRealtime.rtPriority}`
        : `nice ${player.threadPriority?.nice ?? 'of the process'}`,
    packets_sent: s.packets,
    packets_received: received,
    late_over_5ms: s.lateOver5ms,
    late_on_wake: s.lateOnWake,
    late_pct: Number(((100 * s.lateOver5ms) / Math.max(1, s.packets)).toFixed(3)),
    max_late_ms: Number(s.maxLateMs.toFixed(1)),
    max_main_loop_lag_ms: Number(lagMax.toFixed(1)),
    process_cpu_pct: Number(((100 * (cpu.user + cpu.system)) / 1000 / wallMs).toFixed(1)),
    ...host,
    wall_s: Number((wallMs / 1000).toFixed(1)),
  };
}

const RAMP_MS = Number(process.env.RAMP_MS ?? 1000);
const BUSY_MS = Number(process.env.BUSY_MS ?? 0);
/** Nice value of the RTP thread, as media.rtp.threadNice (default -10); NICE=none leaves it at the process's. */
const NICE = process.env.NICE === 'none' ? undefined : Number(process.env.NICE ?? -10);
/** SCHED_FIFO priority of the RTP thread, as media.rtp.realtimePriority (default 10); RT=none: not asked. */
const RT = process.env.RT === 'none' ? undefined : Number(process.env.RT ?? 10);
const USAGE = `npm run bench -- voice [LEVELS]
  LEVELS             concurrent calls per row, comma-separated (default 100,300,500; each 1 to 2000)
Environment: BUSY_MS=n (block the main thread n ms every 100 ms), NICE=n|none (RTP thread nice, default -10),
RT=n|none (SCHED_FIFO priority, default 10). Results go to BENCHMARKS.md by hand.`;
const arg = process.argv[2];
if (arg === '--help' || arg === '-h') {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const levels = (arg ?? '100,300,500').split(',').map(Number);
if (levels.some((n) => !Number.isInteger(n) || n < 1 || n > 2000)) {
  process.stderr.write(`bench voice: LEVELS must be whole numbers from 1 to 2000, comma-separated (got ${JSON.stringify(arg)})\n${USAGE}\n`);
  process.exit(2);
}
const sink = await startSink();
const rows = [];
for (const n of levels) {
  const row = await run(n, sink);
  rows.push(row);
  process.stdout.write(JSON.stringify(row) + '\n');
}
sink.stop();
process.stdout.write(`\nnode ${process.version}, ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}\n`);
console.table(rows);
