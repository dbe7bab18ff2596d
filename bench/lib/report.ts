/** Shared printing and sampling for the load benchmarks. */
import { loadAverages, sampleProc } from './procstat.js';
import { linearFit } from './stats.js';

export function line(s = ''): void {
  process.stdout.write(s + '\n');
}

export function header(title: string, command: string): void {
  line(`== ${title}`);
  line(`command: ${command}`);
  line(`date: ${new Date().toISOString()}   load average (1/5/15 min) before: ${loadAverages()}`);
}

export interface MemSample {
  tSeconds: number;
  rssBytes: number;
  heapBytes: number;
  calls: number;
}

/**
 * Samples a process's RSS (from /proc) and heap and call count (from the
 * caller's `read`) every `everyMs` until stopped: for the memory soak.
 */
export class MemorySampler {
  readonly samples: MemSample[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly t0 = performance.now();

  constructor(
    private readonly pid: number,
    private readonly read: () => Promise<{ heapBytes: number; calls: number }>,
    private readonly everyMs: number,
  ) {}

  start(): void {
    const take = async (): Promise<void> => {
      const p = sampleProc(this.pid);
      const r = await this.read().catch(() => undefined);
      if (p && r) this.samples.push({ tSeconds: (performance.now() - this.t0) / 1000, rssBytes: p.rssBytes, ...r });
    };
    void take();
    // Never what keeps the bench alive (a run that throws before stop() still exits).
    this.timer = setInterval(() => void take(), this.everyMs).unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  report(label: string): string[] {
    const s = this.samples;
    if (s.length < 3) return [`${label}: too few memory samples (${s.length}) for a slope`];
    const out = [`${label}: ${s.length} samples every ${this.everyMs / 1000} s`];
    for (const x of s) {
      out.push(`  t=${x.tSeconds.toFixed(0).padStart(4)} s  calls ${String(x.calls).padStart(8)}  rss ${(x.rssBytes / 2 ** 20).toFixed(1).padStart(7)} MB  heap ${(x.heapBytes / 2 ** 20).toFixed(1).padStart(7)} MB`);
    }
    const slope = (from: number): string => {
      const part = s.slice(from);
      const calls = part.map((x) => x.calls);
      const rss = linearFit(calls, part.map((x) => x.rssBytes));
      const heap = linearFit(calls, part.map((x) => x.heapBytes));
      const secs = linearFit(part.map((x) => x.tSeconds), part.map((x) => x.rssBytes));
      return `rss ${rss.slope.toFixed(1)} B/call (r² ${rss.r2.toFixed(2)}), heap ${heap.slope.toFixed(1)} B/call (r² ${heap.r2.toFixed(2)}), rss ${(secs.slope / 1024).toFixed(1)} KB/s`;
    };
    out.push(`  slope, all samples:          ${slope(0)}`);
    out.push(`  slope, second half (warm):   ${slope(Math.floor(s.length / 2))}`);
    return out;
  }
}
