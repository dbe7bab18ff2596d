/**
 * The host's own scheduling floor, measured in the same seconds as an RTP
 * benchmark: cyclictest (Debian rt-tests), the standard probe of scheduling
 * latency, runs one thread per CPU, pinned (-S), that sleeps 1 ms and records
 * how late each wake-up was: a CPU the host did not run for a while shows, on
 * whichever CPU the RTP thread was. It runs as the RTP thread does: SCHED_FIFO
 * at `media.rtp.realtimePriority`, or, when that is not asked, SCHED_OTHER at
 * the thread's nice value. A wake-up
 * it sees more than 5 ms late is one no program of that priority on this host
 * could have made on time.
 */
import { spawn } from 'node:child_process';

export interface HostFloor {
  /** cyclictest's wake-ups (1 per ms per CPU). */
  host_wakes?: number;
  /** Of those, more than 1 ms late. */
  host_wakes_over_1ms?: number;
  /** Of those, more than 5 ms late: the RTP budget. */
  host_wakes_over_5ms?: number;
  host_max_wake_late_ms?: number;
  /** Why there are no counts (cyclictest missing, or no output). */
  host_floor?: string;
}

export interface FloorProbeOptions {
  /** SCHED_FIFO priority (cyclictest -p); undefined: SCHED_OTHER. */
  fifoPriority?: number | undefined;
  /** nice value for SCHED_OTHER; undefined: the bench's own. */
  nice?: number | undefined;
  /** cyclictest ends by itself after this long if stop() is never called (a bench that failed). Default 900 s. */
  maxSeconds?: number;
}

/** The numbers after a `# Label:` line of cyclictest's summary, one per thread. */
function summaryNumbers(out: string, label: string): number[] {
  const m = new RegExp(`^# ${label}:([\\d\\s]*)$`, 'm').exec(out);
  return m ? m[1]!.trim().split(/\s+/).filter(Boolean).map(Number) : [];
}

/** Reads cyclictest's histogram output (`-q -h N`): one row per microsecond bucket, one column per thread. */
export function parseCyclictest(out: string): HostFloor {
  let wakes = 0;
  let over1 = 0;
  let over5 = 0;
  for (const line of out.split('\n')) {
    if (!/^\d+\s/.test(line)) continue;
    const [us, ...counts] = line.trim().split(/\s+/).map(Number);
    const n = counts.reduce((a, b) => a + b, 0);
    wakes += n;
    if (us! > 1000) over1 += n;
    if (us! > 5000) over5 += n;
  }
  // Wake-ups later than the histogram's last bucket are counted apart.
  const overflow = summaryNumbers(out, 'Histogram Overflows').reduce((a, b) => a + b, 0);
  const max = Math.max(...summaryNumbers(out, 'Max Latencies')) / 1000;
  return {
    host_wakes: wakes + overflow,
    host_wakes_over_1ms: over1 + overflow,
    host_wakes_over_5ms: over5 + overflow,
    host_max_wake_late_ms: Number(max.toFixed(1)),
  };
}

/** Starts cyclictest; `stop()` ends it (SIGINT, as its own Ctrl-C) and returns what it saw. */
export function startFloorProbe(o: FloorProbeOptions = {}): { stop(): Promise<HostFloor> } {
  const args = ['-q', '-m', '-S', '-i', '1000', '-h', '30000', '-D', `${Math.ceil(o.maxSeconds ?? 900)}s`];
  if (o.fifoPriority !== undefined) args.push('-p', String(o.fifoPriority));
  const child =
    o.fifoPriority === undefined && o.nice !== undefined ? spawn('nice', ['-n', String(o.nice), 'cyclictest', ...args]) : spawn('cyclictest', args);
  let out = '';
  let failed: string | undefined;
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (failed ??= d.toString().trim().split('\n')[0]));
  child.on('error', (err) => (failed = err.message));
  const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
  return {
    async stop(): Promise<HostFloor> {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
      if (!/# Total:/.test(out)) return { host_floor: `cyclictest not run (${failed ?? 'no output'}; apt install rt-tests)` };
      return parseCyclictest(out);
    },
  };
}

/** One line for a report. */
export function formatFloor(f: HostFloor): string {
  if (f.host_floor) return f.host_floor;
  return `${f.host_wakes} wake-ups, ${f.host_wakes_over_1ms} more than 1 ms late, ${f.host_wakes_over_5ms} more than 5 ms late, latest ${f.host_max_wake_late_ms} ms`;
}
