import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

export interface CounterBatchOptions {
  /** How often pending increments are written (default 250 ms). */
  flushMs?: number;
  /** Distinct (key, field) pairs held at most; increments of new pairs beyond it are dropped and counted (default 100,000). */
  maxPending?: number;
}

interface PendingKey {
  fields: Map<string, number>;
  /** PEXPIRE set on the key when it is written (the longest asked for since the last write). */
  ttlMs: number;
}

/**
 * HINCRBY counters of this process, written in batches: `hincrby()` only adds
 * to a tally in memory; every `flushMs` (and on `flush()`) the tally goes out
 * in one MULTI: one HINCRBY per (key, field) with the summed amount, then one
 * PEXPIRE per key touched. At load this turns several Redis commands per call
 * into a few per flush (the reporting counters were most of the engine's
 * commands). A graceful stop (`close()`) writes what is pending; a crash loses
 * at most the last `flushMs`.
 *
 * A flush that fails (Redis down) keeps its increments for the next one: they
 * are summed with what was counted since, within `maxPending` distinct
 * (key, field) pairs. A MULTI is all or nothing, so a failed flush landed none
 * of them; only a connection lost after EXEC was sent (its answer lost) may
 * count twice. A command Redis refuses inside the MULTI (a key of another
 * type) is logged and not retried. Readers that must see this process's own
 * increments (range health's judgement, operator reads) flush first.
 */
export class CounterBatch {
  private pending = new Map<string, PendingKey>();
  private pairs = 0;
  private dropped = 0;
  private failing = false;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  /** The last flush started: the next one runs after it, so flush() resolves once everything counted before the call is written. */
  private tail: Promise<void> = Promise.resolve();
  private readonly flushMs: number;
  private readonly maxPending: number;

  constructor(
    private readonly redis: Redis,
    private readonly logger: Logger,
    options: CounterBatchOptions = {},
  ) {
    this.flushMs = options.flushMs ?? 250;
    this.maxPending = options.maxPending ?? 100_000;
  }

  /** Adds `by` to `field` of hash `key`, written with the next flush; the key gets a TTL of `ttlMs` then. */
  hincrby(key: string, field: string, by: number, ttlMs: number): void {
    this.add(key, field, by, ttlMs);
    this.arm();
  }

  /** Distinct (key, field) pairs waiting for a flush. */
  get pendingPairs(): number {
    return this.pairs;
  }

  /**
   * Writes what is pending now (after a flush already under way). Rejects when
   * Redis refused or could not be reached; the increments stay pending then,
   * for the next flush.
   */
  flush(): Promise<void> {
    const run = this.tail.then(() => this.writePending());
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** Stops the timer and writes what is pending (rejects as flush() does). */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    try {
      await this.flush();
    } catch (err) {
      this.logger.error({ err: (err as Error).message, pending_pairs: this.pairs }, 'counters not written at close: lost');
      throw err;
    }
  }

  private arm(): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      // Failures are logged by writePending (once per streak); the increments wait for the next flush.
      this.flush().catch(() => undefined);
    }, this.flushMs);
    // Never what keeps a process alive: a graceful stop calls close().
    this.timer.unref();
  }

  private async writePending(): Promise<void> {
    this.reportDropped();
    if (this.pending.size === 0) return;
    const batch = this.pending;
    this.pending = new Map();
    this.pairs = 0;
    const m = this.redis.multi();
    for (const [key, k] of batch) for (const [field, by] of k.fields) m.hincrby(key, field, by);
    for (const [key, k] of batch) m.pexpire(key, k.ttlMs);
    let results: [Error | null, unknown][] | null;
    try {
      results = await m.exec();
      if (!results) throw new Error('transaction discarded');
    } catch (err) {
      this.restore(batch);
      if (!this.failing) {
        this.failing = true;
        this.logger.warn({ err: (err as Error).message, pending_pairs: this.pairs }, 'could not write the counters; kept for the next flush');
      }
      this.arm();
      throw err;
    }
    if (this.failing) {
      this.failing = false;
      this.logger.info('counters written again');
    }
    const refused = results.filter(([e]) => e);
    if (refused.length) {
      this.logger.error({ err: refused[0]![0]!.message, commands: refused.length }, 'Redis refused counter commands; those increments are lost');
    }
  }

  /** Puts a batch that could not be written back in front of what was counted since. */
  private restore(batch: Map<string, PendingKey>): void {
    const since = this.pending;
    this.pending = new Map();
    this.pairs = 0;
    for (const b of [batch, since]) {
      for (const [key, k] of b) for (const [field, by] of k.fields) this.add(key, field, by, k.ttlMs);
    }
  }

  /** Sums into the tally; beyond `maxPending` distinct pairs a new pair is dropped (and counted). */
  private add(key: string, field: string, by: number, ttlMs: number): void {
    const k = this.pending.get(key);
    const before = k?.fields.get(field);
    if (before === undefined) {
      if (this.pairs >= this.maxPending) {
        this.dropped += by;
        return;
      }
      this.pairs++;
    }
    if (k) {
      k.fields.set(field, (before ?? 0) + by);
      if (ttlMs > k.ttlMs) k.ttlMs = ttlMs;
    } else {
      this.pending.set(key, { fields: new Map([[field, by]]), ttlMs });
    }
  }

  private reportDropped(): void {
    if (this.dropped === 0) return;
    this.logger.warn({ dropped_increments: this.dropped, max_pending: this.maxPending }, 'counter increments dropped: too many distinct counters waiting for Redis');
    this.dropped = 0;
  }
}
