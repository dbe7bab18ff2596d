/**
 * A trunk's CPS and channel limit for every worker process together (`sip.trunkLimits: cluster`, the default): a
 * carrier's limits are the interconnect's, whatever the number of worker processes that place calls on it.
 *
 * - CPS: each worker reserves its calls' send slots in Redis (reserveRateSlots-1.lua, GCRA on Redis's clock), the calls
 *   of one event-loop turn in one script, and lets each call go at its slot. An idle trunk lets `cps` calls go at once,
 *   as a process's own token bucket of one second does; after that, one call every 1000 / cps ms, cluster-wide.
 * - Channels (`maxCalls`): each worker's count of the channels it holds is one field of a hash
 *   (takeSharedCount-3.lua, giveSharedCount-2.lua), under a lease renewed while the worker runs: a worker that
 *   died, or stalled longer than the lease, no longer counts once its lease lapses. TrunkPacer asks for channels,
 *   hands a channel freed in this worker to its own next waiter directly, and asks again every `pollMs` while calls
 *   wait for one another worker may free.
 *
 * Redis failing (a script refused or timed out): the worker falls back to its own limits, as with
 * `sip.trunkLimits: process`, with a warn line once a minute, until Redis answers again: a call is never held back
 * because its limit could not be counted.
 */
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { TrunkConfig } from '../config/schema.js';
import type { Keys } from '../store/keys.js';
import { scripts } from '../store/scripts.js';
import { TokenBucket } from './token-bucket.js';

export interface ClusterLimitsOptions {
  /** A worker's hold on its channels lapses this long after its last word to Redis (ms; renewed every third of it). */
  leaseMs?: number;
  /** While calls wait for a channel held by another worker, asked again this often (ms). */
  pollMs?: number;
  logger?: Logger;
  /** Each time a worker keeps to its own limit because Redis failed (flashverify_trunk_limit_fallbacks_total). */
  onFallback?: (trunk: string, limit: 'cps' | 'channels') => void;
}

export const DEFAULT_LEASE_MS = 15_000;
export const DEFAULT_POLL_MS = 25;
/** A give Redis refused is sent again this often (SharedCount.flushGive). */
const GIVE_RETRY_MS = 250;

export class ClusterLimits {
  readonly leaseMs: number;
  readonly pollMs: number;
  private readonly gates = new Map<string, SharedRate>();
  private readonly channels = new Map<string, SharedCount>();
  private readonly warnNow = oncePer(60_000);

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    /** This worker process, unique in the cluster (host and pid). */
    readonly worker: string,
    private readonly options: ClusterLimitsOptions = {},
  ) {
    this.leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
    this.pollMs = options.pollMs ?? DEFAULT_POLL_MS;
  }

  /** Resolves at the trunk's next cluster-wide CPS slot. */
  take(trunk: TrunkConfig): Promise<void> {
    let gate = this.gates.get(trunk.name);
    if (!gate) {
      gate = new SharedRate(this.redis, this.keys.trunkCps(trunk.name), trunk.cps, (err) =>
        this.fellBack(trunk.name, 'cps', err, 'could not reserve the trunk\'s CPS slots in Redis'),
      );
      this.gates.set(trunk.name, gate);
    }
    return gate.take();
  }

  /**
   * Takes up to `n` of the trunk's channels for this worker (0: renews its lease only); `held`: the channels it holds
   * by its own count. Resolves with those granted and the trunk's total in use across the cluster after it.
   */
  takeChannels(trunk: TrunkConfig, n: number, held: number): Promise<{ granted: number; total: number; others: number }> {
    return this.channelsOf(trunk).take(n, held);
  }

  /** Changes this worker's count of the trunk's channels by `delta` (the changes of one turn in one script). */
  giveChannels(trunk: TrunkConfig, delta: number): void {
    this.channelsOf(trunk).give(delta);
  }

  /** The worker stops: its channels of these trunks no longer count. */
  async leave(trunks: readonly TrunkConfig[]): Promise<void> {
    await Promise.all(trunks.map((t) => this.channelsOf(t).leave()));
  }

  private channelsOf(trunk: TrunkConfig): SharedCount {
    let count = this.channels.get(trunk.name);
    if (!count) {
      const keys = { count: this.keys.trunkChannels(trunk.name), leases: this.keys.trunkChannelLeases(trunk.name), wants: this.keys.trunkChannelWants(trunk.name) };
      count = new SharedCount(this.redis, keys, this.worker, trunk.maxCalls ?? 0, {
        leaseMs: this.leaseMs,
        wantFreshMs: 4 * this.pollMs,
        // Not counted back: the count is this worker's until its lease lapses (15 s after its last word to Redis).
        onGiveFailed: (err) => this.fellBack(trunk.name, 'channels', err, 'could not give back trunk channels in Redis'),
        onLeaveFailed: (err) =>
          this.options.logger?.warn({ trunk: trunk.name, err: err.message }, 'could not remove this worker\'s trunk channels from Redis; they count until its lease lapses'),
      });
      this.channels.set(trunk.name, count);
    }
    return count;
  }

  /**
   * A limit of `trunk` counted by this worker alone because Redis failed: counted in the metric each time, told in a
   * warn line at most once a minute (Redis failing fails every call's script).
   */
  fellBack(trunk: string, limit: 'cps' | 'channels', err: Error, msg: string): void {
    this.options.onFallback?.(trunk, limit);
    if (!this.warnNow()) return;
    this.options.logger?.warn(
      { trunk, limit, err: err.message },
      `${msg}; this worker keeps to the trunk's limits alone (as sip.trunkLimits: process) until Redis answers`,
    );
  }
}

/** The Redis keys of a SharedCount (store/keys.ts): the shares, the leases, the notes of workers asking in vain. */
export interface SharedCountKeys {
  count: string;
  leases: string;
  wants: string;
}

/**
 * A count capped over every worker process (a trunk's channels, an SMSC account's binds): each worker's share is a
 * field of `keys.count` under a lease in `keys.leases` that every take and give renews (takeSharedCount-3.lua,
 * giveSharedCount-2.lua); a worker whose lease lapsed no longer counts. The gives of one event-loop turn go in one
 * script. Each take also says how many other workers asked in vain lately (`keys.wants`), for a fair share.
 */
export class SharedCount {
  private giving = 0;
  private givingQueued = false;
  readonly leaseMs: number;
  private readonly wantFreshMs: number;

  constructor(
    private readonly redis: Redis,
    private readonly keys: SharedCountKeys,
    readonly worker: string,
    private readonly max: number,
    private readonly options: {
      leaseMs?: number;
      /** How long a worker's asking in vain counts for the others (ms; default 4 × DEFAULT_POLL_MS). */
      wantFreshMs?: number;
      onGiveFailed?: (err: Error) => void;
      onLeaveFailed?: (err: Error) => void;
    } = {},
  ) {
    this.leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
    this.wantFreshMs = options.wantFreshMs ?? 4 * DEFAULT_POLL_MS;
  }

  /**
   * Takes up to `n` for this worker (0: renews its lease only); `held`: its share by its own count. `others`: the
   * other workers that asked in vain lately.
   */
  async take(n: number, held: number): Promise<{ granted: number; total: number; others: number }> {
    const [granted, total, others] = (await scripts.takeSharedCount.run(
      this.redis,
      [this.keys.count, this.keys.leases, this.keys.wants],
      [this.worker, n, this.max, this.leaseMs, held, this.wantFreshMs],
    )) as [number, number, number];
    return { granted, total, others };
  }

  /** Changes this worker's share by `delta`. */
  give(delta: number): void {
    this.giving += delta;
    if (this.givingQueued) return;
    this.givingQueued = true;
    queueMicrotask(() => this.flushGive(undefined));
  }

  /**
   * Writes the gives of one turn. A give Redis refuses (full, unreachable a moment) is sent again every
   * GIVE_RETRY_MS for up to half a lease: dropped, the share it gives back would stay counted for as long as this
   * worker's lease is renewed (its own count is written back only once its field has lapsed), and the trunk's calls
   * would wait for channels nobody holds. Past half a lease it is dropped: by then the lease may lapse, and the
   * worker's own count, written back, already has it.
   */
  private flushGive(failingSince: number | undefined): void {
    const d = this.giving;
    this.giving = 0;
    this.givingQueued = false;
    if (d === 0) return;
    scripts.giveSharedCount.run(this.redis, [this.keys.count, this.keys.leases], [this.worker, d, this.leaseMs]).catch((err: Error) => {
      if (failingSince === undefined) this.options.onGiveFailed?.(err);
      const since = failingSince ?? Date.now();
      if (Date.now() - since >= this.leaseMs / 2) return;
      this.giving += d;
      if (this.givingQueued) return;
      this.givingQueued = true;
      setTimeout(() => this.flushGive(since), GIVE_RETRY_MS).unref();
    });
  }

  /** This worker's share no longer counts (it stops). */
  async leave(): Promise<void> {
    await Promise.all([
      this.redis.hdel(this.keys.count, this.worker),
      this.redis.zrem(this.keys.leases, this.worker),
      this.redis.zrem(this.keys.wants, this.worker),
    ]).catch((err: Error) => this.options.onLeaveFailed?.(err));
  }
}

/** True at the first call, then at most once per `ms` (a warn line for a failure that repeats with every call). */
export function oncePer(ms: number): () => boolean {
  let last = -Infinity;
  return () => {
    const now = performance.now();
    if (now - last < ms) return false;
    last = now;
    return true;
  };
}

/**
 * A rate shared by every worker process (a trunk's CPS, an SMSC account's TPS): slots reserved in Redis
 * (reserveRateSlots-1.lua), the takes of one event-loop turn together, each let go at its slot. An idle limit lets
 * `ratePerSecond` go at once, then one every 1000 / rate ms. Redis failing: `onFailure`, and this process's own bucket
 * at the same rate.
 */
export class SharedRate {
  private pending: (() => void)[] = [];
  /** Reserved slots not yet due, in order: when (performance.now()) and whom to let go. */
  private readonly due: { at: number; go: () => void }[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly interval: number;
  /** This worker's own bucket, when Redis fails. */
  private local: TokenBucket | undefined;

  constructor(
    private readonly redis: Redis,
    private readonly key: string,
    private readonly ratePerSecond: number,
    private readonly onFailure: (err: Error) => void,
  ) {
    this.interval = 1000 / ratePerSecond;
  }

  take(): Promise<void> {
    return new Promise((go) => {
      this.pending.push(go);
      if (this.pending.length === 1) queueMicrotask(() => this.reserve());
    });
  }

  private reserve(): void {
    const batch = this.pending;
    this.pending = [];
    scripts.reserveRateSlots.run(this.redis, [this.key], [batch.length, this.interval, Math.max(0, 1000 - this.interval)]).then(
      (first) => {
        // Slot times on this worker's clock, from the answer's arrival: later by the reply's way back, never earlier.
        const at = performance.now() + Number(first);
        for (let i = 0; i < batch.length; i++) {
          const slot = at + i * this.interval;
          if (slot <= performance.now()) batch[i]!();
          else this.enqueue(slot, batch[i]!);
        }
      },
      (err: Error) => {
        this.onFailure(err);
        this.local ??= new TokenBucket(this.ratePerSecond);
        for (const go of batch) void this.local.take().then(go);
      },
    );
  }

  private enqueue(at: number, go: () => void): void {
    // Nearly always after the last one (slots only move on): an insertion from the end.
    let i = this.due.length;
    while (i > 0 && this.due[i - 1]!.at > at) i--;
    this.due.splice(i, 0, { at, go });
    if (i === 0) this.arm();
  }

  private arm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const head = this.due[0];
    if (!head) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const now = performance.now();
      while (this.due.length > 0 && this.due[0]!.at <= now + 0.5) this.due.shift()!.go();
      this.arm();
    }, Math.max(0, head.at - performance.now()));
  }
}
