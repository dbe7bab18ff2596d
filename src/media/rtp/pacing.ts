/**
 * Drift-free pacing of a packet stream: packet i is due at start + i × period,
 * computed from the start time each time, never by adding a delay to the
 * previous send (chained timers accumulate every wake-up's lateness). When
 * the process wakes late, every packet already due is sent at once, so the
 * stream catches up instead of stretching.
 */

/** The clock and timer a schedule runs on; injectable for tests. */
export interface PacingClock {
  /** Monotonic milliseconds (performance.now()). */
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realPacingClock: PacingClock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** Due time of packet `index` of a stream started at `startMs`. */
export function dueTime(startMs: number, periodMs: number, index: number): number {
  return startMs + index * periodMs;
}

/** Indexes in [from, count) that are due at `nowMs`: returns the first index not yet due. */
export function dueUpTo(startMs: number, periodMs: number, from: number, count: number, nowMs: number): number {
  // floor((now - start) / period) is the last due index; guard float error with a tiny epsilon.
  const last = Math.floor((nowMs - startMs) / periodMs + 1e-9);
  return Math.max(from, Math.min(count, last + 1));
}

/** Delay to arm so the timer fires at packet `index`'s due time (never negative). */
export function delayUntil(startMs: number, periodMs: number, index: number, nowMs: number): number {
  return Math.max(0, dueTime(startMs, periodMs, index) - nowMs);
}

export interface PacedRunOptions {
  count: number;
  periodMs: number;
  clock?: PacingClock;
  /** Sends packet `index`; `lateMs` is how far past its due time it went out. */
  send(index: number, lateMs: number): void;
  /** Called once: after the last packet, or when stopped. */
  done(completed: boolean): void;
}

/** Runs a paced stream of `count` packets; the first is sent at once. Returns a stop function. */
export function runPaced(opts: PacedRunOptions): () => void {
  const clock = opts.clock ?? realPacingClock;
  const start = clock.now();
  let next = 0;
  let stopped = false;
  let timer: unknown;
  const finish = (completed: boolean): void => {
    if (stopped) return;
    stopped = true;
    if (timer !== undefined) clock.clearTimeout(timer);
    opts.done(completed);
  };
  const tick = (): void => {
    timer = undefined;
    if (stopped) return;
    const now = clock.now();
    const upTo = dueUpTo(start, opts.periodMs, next, opts.count, now);
    for (; next < upTo && !stopped; next++) opts.send(next, now - dueTime(start, opts.periodMs, next));
    if (stopped) return;
    if (next >= opts.count) return finish(true);
    timer = clock.setTimeout(tick, delayUntil(start, opts.periodMs, next, clock.now()));
  };
  tick();
  return () => finish(false);
}
