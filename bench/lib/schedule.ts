/**
 * Open-loop arrival schedule: request i is due at start + i / rate, whatever
 * happened to earlier requests. Latency is measured from that due time, so a
 * stall (of the server, or of the generator itself) is charged to every
 * request that should have left during it: no coordinated omission.
 */
export class OpenLoopSchedule {
  readonly total: number;
  private next = 0;

  constructor(
    readonly ratePerSecond: number,
    readonly durationSeconds: number,
    /** Hard cap on requests, whatever rate × duration says. */
    maxRequests: number,
  ) {
    if (!(ratePerSecond > 0) || !(durationSeconds > 0)) throw new Error('rate and duration must be positive');
    this.total = Math.min(maxRequests, Math.floor(ratePerSecond * durationSeconds));
  }

  /** Due time of request i, ms after the start. */
  dueMs(i: number): number {
    return (i * 1000) / this.ratePerSecond;
  }

  /** Indexes of the requests due by `elapsedMs` that were not handed out yet, in order. */
  take(elapsedMs: number): { from: number; to: number } {
    const from = this.next;
    const due = Math.min(this.total, Math.floor((elapsedMs * this.ratePerSecond) / 1000) + 1);
    if (due > this.next) this.next = due;
    return { from, to: this.next };
  }

  get done(): boolean {
    return this.next >= this.total;
  }

  /** Ms until the next request is due (0 if one is due already). */
  waitMs(elapsedMs: number): number {
    if (this.done) return Number.POSITIVE_INFINITY;
    return Math.max(0, this.dueMs(this.next) - elapsedMs);
  }
}
