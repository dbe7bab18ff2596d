/**
 * An SMSC's TPS per bind, as SMSCs count it: at most `tps` submit_sm in any one second (a fraction above one rounds
 * down; a rate below one a second, 0.5: one in any 2 s). `take()` resolves when the next may go. Unlike a token bucket holding a second's worth (what
 * a trunk's CPS uses), an idle bind does not let a full second's worth go and then as many again within the same
 * second: SMSCs answer such a second with ESME_RTHROTTLED.
 */
export class TpsWindow {
  /** Sends allowed in one window. */
  private readonly permits: number;
  private readonly windowMs: number;
  /** When the last `permits` sends went, a ring: `head` is the oldest. */
  private readonly sent: number[];
  private head = 0;
  private count = 0;
  private readonly waiters: (() => void)[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    tps: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    // At least one a second: floor(tps) in any one second (2.5 holds to 2, never 3 in some second); below one a second,
    // one in any 1 / tps seconds.
    this.permits = Math.max(1, Math.floor(tps));
    this.windowMs = tps >= 1 ? 1000 : 1000 / tps;
    this.sent = new Array<number>(this.permits).fill(0);
  }

  take(): Promise<void> {
    if (this.waiters.length === 0 && this.free(this.now())) {
      this.record(this.now());
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.waiters.push(resolve);
      this.schedule();
    });
  }

  private free(t: number): boolean {
    return this.count < this.permits || t - this.sent[this.head]! >= this.windowMs;
  }

  private record(t: number): void {
    if (this.count < this.permits) {
      this.sent[(this.head + this.count) % this.permits] = t;
      this.count += 1;
    } else {
      this.sent[this.head] = t;
      this.head = (this.head + 1) % this.permits;
    }
  }

  private schedule(): void {
    if (this.timer) return;
    const waitMs = Math.max(1, Math.ceil(this.sent[this.head]! + this.windowMs - this.now()));
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const t = this.now();
      while (this.waiters.length && this.free(t)) {
        this.record(t);
        this.waiters.shift()!();
      }
      if (this.waiters.length) this.schedule();
    }, waitMs);
  }
}
