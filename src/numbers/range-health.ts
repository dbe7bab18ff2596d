import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { FraudConfig } from '../config/schema.js';
import { CounterBatch } from '../store/counter-batch.js';
import type { Keys } from '../store/keys.js';
import { utcDay } from '../verification/types.js';

export type RangeHealthConfig = FraudConfig['rangeHealth'];

/** A range's flash outcomes over the window. */
export interface RangeStats {
  /** Calls that got a final outcome. */
  attempts: number;
  /** Calls that showed the caller ID (rang, or answered). */
  sent: number;
  /** Calls refused with a final 403 or 603 before ringing. */
  rejected: number;
  /** Verified requests whose call was placed in the window. */
  verified: number;
  /** Sent and verified over the buckets older than the grace period: the cohort the conversion rule judges. */
  judgedSent: number;
  judgedVerified: number;
}

export type QuarantineReason = 'rejected' | 'unverified' | 'manual';

/** What the range selector asks before it uses a range. */
export interface RangeUsability {
  usable(rangePrefix: string): Promise<boolean>;
}

/**
 * Health of the DID ranges used as flash-call CLIs. Counts per range, in time
 * buckets over `windowSeconds`, the calls placed, shown (sent), refused with
 * 403/603 (rejected) and later verified (attributed to the bucket of the
 * call, so a cohort's conversion is judged once its users had time to type);
 * per UTC day too, for reporting. A range whose reject ratio is too high, or
 * whose conversion is too low, is quarantined for `quarantineSeconds`: the
 * range selector skips it (terminating carriers that block a CLI range answer
 * 603/403, or let it ring with the caller ID hidden or rewritten, which shows
 * as sends nobody verifies).
 *
 * The counters are written in batches (store/counter-batch.ts, every 250 ms
 * per process): recording is a tally in memory, and the judgement flushes this
 * process's tally before it reads the window, so it always sees its own
 * outcomes; other processes' outcomes reach it at most one flush late.
 */
export class RangeHealth implements RangeUsability {
  private readonly bucketMs: number;
  private cache: { at: number; quarantined: Set<string> } | undefined;
  private readonly now: () => number;
  private readonly cacheMs: number;
  private readonly judgeIntervalMs: number;
  /** When each range was last judged by this process, and the trailing judgement due for outcomes recorded since. */
  private readonly judged = new Map<string, { at: number; trailing?: NodeJS.Timeout }>();
  /** Where this range health's counters wait for their write (shared with the fraud controls in the engine). */
  readonly counters: CounterBatch;

  constructor(
    private readonly deps: {
      redis: Redis;
      keys: Keys;
      /** `judgeIntervalMs` may be left out (1000). */
      config: Readonly<Omit<RangeHealthConfig, 'judgeIntervalMs'> & { judgeIntervalMs?: number }>;
      /** Every configured range prefix (for the gauge and the cache). */
      ranges: readonly string[];
      logger: Logger;
      now?: () => number;
      /** How long the quarantine set read from Redis is reused (other processes see a quarantine this late). */
      cacheMs?: number;
      /** The process's counter batch; left out, range health has one of its own (flushed every 250 ms). */
      counters?: CounterBatch;
    },
  ) {
    this.counters = deps.counters ?? new CounterBatch(deps.redis, deps.logger);
    this.bucketMs = Math.max(1000, Math.ceil((deps.config.windowSeconds * 1000) / 12));
    this.now = deps.now ?? Date.now;
    this.cacheMs = deps.cacheMs ?? 1000;
    this.judgeIntervalMs = deps.config.judgeIntervalMs ?? 1000;
  }

  get ranges(): readonly string[] {
    return this.deps.ranges;
  }

  /**
   * One flash call finished on `range`. Hot path (every call): counters only,
   * added to this process's batch (no Redis command of its own: the batch
   * writes one HINCRBY per counter and one PEXPIRE per key per flush). The
   * range is judged (its batch flushed, then its whole window read) at most
   * once per `judgeIntervalMs` per process: now when the last judgement is
   * older, else once that interval has passed, so the last outcomes are judged
   * too. Returns the quarantine reason when this call judged the range and
   * quarantined it.
   */
  async recordDial(
    range: string,
    outcome: { sent: boolean; rejected: boolean },
    at = this.now(),
    /** false: the call went out while the range was quarantined (every range was): the day's counters only, not the window it is judged on. */
    judged = true,
  ): Promise<QuarantineReason | undefined> {
    const dayField = outcome.sent ? `range:${range}:sent` : outcome.rejected ? `range:${range}:rejected` : undefined;
    if (dayField) this.counters.hincrby(this.deps.keys.conversion(utcDay(at)), dayField, 1, CONVERSION_TTL_MS);
    if (!judged) return undefined;
    const bucket = this.deps.keys.rangeBucket(range, this.bucketOf(at));
    const ttlMs = this.bucketTtlMs();
    this.counters.hincrby(bucket, 'attempts', 1, ttlMs);
    if (outcome.sent) this.counters.hincrby(bucket, 'sent', 1, ttlMs);
    if (outcome.rejected) this.counters.hincrby(bucket, 'rejected', 1, ttlMs);
    return this.judgeAtMostEvery(range, at);
  }

  /**
   * A request whose flash call went out on `range` at `sentAt` was verified (counted in the batch, like recordDial).
   * `judged` false: that call went out while the range was quarantined: the day's counter only, as recordDial.
   */
  async recordVerified(range: string, sentAt: number, at = this.now(), judged = true): Promise<void> {
    this.counters.hincrby(this.deps.keys.conversion(utcDay(at)), `range:${range}:verified`, 1, CONVERSION_TTL_MS);
    if (judged && sentAt > at - this.deps.config.windowSeconds * 1000) {
      this.counters.hincrby(this.deps.keys.rangeBucket(range, this.bucketOf(sentAt)), 'verified', 1, this.bucketTtlMs());
    }
  }

  /** Writes this process's pending counters now (stats() and quarantine() do it themselves). */
  flush(): Promise<void> {
    return this.counters.flush();
  }

  /** A range's window, this process's pending counters included (flushed first). */
  async stats(range: string, at = this.now()): Promise<RangeStats> {
    const { windowSeconds, conversionGraceSeconds } = this.deps.config;
    const first = this.bucketOf(at - windowSeconds * 1000 + 1);
    const starts: number[] = [];
    for (let b = first; b <= at; b += this.bucketMs) starts.push(b);
    await this.counters.flush();
    const p = this.deps.redis.pipeline();
    for (const b of starts) p.hmget(this.deps.keys.rangeBucket(range, b), 'attempts', 'sent', 'rejected', 'verified');
    const rows = ((await p.exec()) ?? []).map(([, r]) => ((r ?? []) as (string | null)[]).map((v) => Number(v ?? 0)));
    const s: RangeStats = { attempts: 0, sent: 0, rejected: 0, verified: 0, judgedSent: 0, judgedVerified: 0 };
    rows.forEach(([attempts = 0, sent = 0, rejected = 0, verified = 0], i) => {
      s.attempts += attempts;
      s.sent += sent;
      s.rejected += rejected;
      s.verified += verified;
      if (starts[i]! + this.bucketMs <= at - conversionGraceSeconds * 1000) {
        s.judgedSent += sent;
        s.judgedVerified += verified;
      }
    });
    return s;
  }

  /** Judges a range on its window; quarantines it and returns why, or undefined. */
  async evaluate(range: string, at = this.now()): Promise<QuarantineReason | undefined> {
    const cfg = this.deps.config;
    if (!cfg.enabled) return undefined;
    const s = await this.stats(range, at);
    let reason: QuarantineReason | undefined;
    if (s.attempts >= cfg.minSample && s.rejected / s.attempts > cfg.maxRejectRatio) reason = 'rejected';
    else if (cfg.minConversionRatio > 0 && s.judgedSent >= cfg.minSample && s.judgedVerified / s.judgedSent < cfg.minConversionRatio) {
      reason = 'unverified';
    }
    if (reason && (await this.quarantine(range, reason, s, at))) return reason;
    return undefined;
  }

  /**
   * Takes a range out of rotation for `quarantineSeconds`. Its window starts
   * afresh, so that it is judged on new calls only once it is back.
   * Returns false when it already was quarantined.
   */
  async quarantine(range: string, reason: QuarantineReason, stats?: RangeStats, at = this.now()): Promise<boolean> {
    const { redis, keys, config } = this.deps;
    const ok = await redis.set(keys.rangeQuarantine(range), reason, 'EX', config.quarantineSeconds, 'NX');
    if (ok !== 'OK') return false;
    const buckets: string[] = [];
    for (let b = this.bucketOf(at - config.windowSeconds * 1000); b <= at; b += this.bucketMs) buckets.push(keys.rangeBucket(range, b));
    // Outcomes still in this process's batch belong to the window being cleared: written first, so that they go with it.
    await this.counters.flush();
    await redis.del(...buckets);
    this.cache?.quarantined.add(range);
    this.deps.logger.warn(
      { range, reason, quarantine_seconds: config.quarantineSeconds, ...stats },
      `DID range ${range} quarantined (${reason === 'rejected' ? 'calls rejected 403/603' : reason === 'unverified' ? 'calls not verified' : 'by an operator'})`,
    );
    return true;
  }

  /** Puts a quarantined range back into rotation now. */
  async release(range: string): Promise<void> {
    await this.deps.redis.del(this.deps.keys.rangeQuarantine(range));
    this.cache?.quarantined.delete(range);
    this.deps.logger.info({ range }, `DID range ${range} released from quarantine`);
  }

  private async judgeAtMostEvery(range: string, at: number): Promise<QuarantineReason | undefined> {
    const t = this.now();
    const last = this.judged.get(range);
    if (!last || t - last.at >= this.judgeIntervalMs) {
      if (last?.trailing) clearTimeout(last.trailing);
      this.judged.set(range, { at: t });
      return this.evaluate(range, at);
    }
    if (!last.trailing) {
      last.trailing = setTimeout(() => {
        this.judged.set(range, { at: this.now() });
        this.evaluate(range).catch((err: Error) => this.deps.logger.warn({ range, err: err.message }, 'could not judge the range'));
      }, Math.max(0, last.at + this.judgeIntervalMs - t));
      last.trailing.unref();
    }
    return undefined;
  }

  /** Ranges quarantined now (read from Redis at most every `cacheMs`). */
  async quarantined(): Promise<Set<string>> {
    const at = this.now();
    if (this.cache && at - this.cache.at < this.cacheMs) return this.cache.quarantined;
    const ranges = this.deps.ranges;
    const values = ranges.length ? await this.deps.redis.mget(...ranges.map((r) => this.deps.keys.rangeQuarantine(r))) : [];
    const quarantined = new Set(ranges.filter((_, i) => values[i] !== null));
    this.cache = { at, quarantined };
    return quarantined;
  }

  async usable(range: string): Promise<boolean> {
    return !(await this.quarantined()).has(range);
  }

  private bucketOf(t: number): number {
    return t - (t % this.bucketMs);
  }

  private bucketTtlMs(): number {
    return this.deps.config.windowSeconds * 1000 + this.bucketMs;
  }
}

/** Per-day conversion counters are kept for reporting this long. */
export const CONVERSION_TTL_MS = 400 * 24 * 3600 * 1000;
