import type { TrunkConfig } from '../config/schema.js';
import { routeByPrefix } from '../numbers/prefix-route.js';
import type { ClusterLimits } from './cluster-limits.js';
import { TokenBucket } from './token-bucket.js';

export interface TrunkHealthOptions {
  /** Calls (and OPTIONS pings) in a row ending `unreachable`/`timeout` before the trunk is marked down. */
  failuresToMarkDown: number;
  /** First wait before a down trunk gets a call again (the probe); doubles at each failed probe. */
  retryAfterMs: number;
  maxRetryAfterMs: number;
  /**
   * A probe call not reported within this (its job threw or hung before `report()`) no longer holds
   * the trunk: the next call after it may probe again. Default `maxRetryAfterMs`.
   */
  probeTimeoutMs?: number;
  /** Final SIP statuses that count as the trunk failing, as unreachable/timeout do (sip.trunkHealth.failureStatuses; default [503]). */
  failureStatuses?: readonly number[];
}

/** What a finished call (or OPTIONS ping) says about its trunk. */
export type TrunkVerdict =
  /** The trunk answered (any SIP response): it is alive. */
  | 'up'
  /** Transport error, Timer B, or a ping's timeout: nothing came back. */
  | 'failed'
  /** Says nothing about the trunk (no CLI, no media port, no 18x in time ...). */
  | 'neutral';

/** 503 Service Unavailable: the server's own overload or maintenance (RFC 3261 21.5.4), not the callee's answer. */
export const DEFAULT_FAILURE_STATUSES: readonly number[] = [503];

/**
 * The trunk verdict of a call outcome. A final `sipStatus` in `failureStatuses` (default 503) is the trunk's failure
 * too, unless the call had rung first (a flash call's `cancelled`: the trunk delivered it) or says nothing of the trunk.
 */
export function trunkVerdict(outcome: string, sipStatus?: number, failureStatuses: readonly number[] = DEFAULT_FAILURE_STATUSES): TrunkVerdict {
  if (outcome === 'unreachable' || outcome === 'timeout') return 'failed';
  if (outcome === 'no_ringing' || outcome === 'no_answer' || outcome === 'no_media_resources' || outcome === 'no_cli' || outcome === 'shutdown') return 'neutral';
  if (sipStatus !== undefined && outcome !== 'cancelled' && failureStatuses.includes(sipStatus)) return 'failed';
  return 'up';
}

export interface TrunkState {
  name: string;
  up: boolean;
  /** Not taken out of service by an operator (engine/trunk-admin.ts). */
  enabled: boolean;
  /** Calls holding one of the trunk's `maxCalls` slots now (every call when it has no cap). */
  calls: number;
  /** Calls waiting for one of its slots. */
  waiting: number;
  /** `maxCalls`, or undefined: no cap. */
  maxCalls: number | undefined;
}

/** Told when a trunk goes down or comes back (logs). `pinged`: OPTIONS pings, not a probe call, bring it back. */
export type TrunkChangeListener = (name: string, up: boolean, detail: { failures: number; retryInMs: number; pinged: boolean }) => void;

interface Health {
  trunk: TrunkConfig;
  up: boolean;
  failures: number;
  backoffMs: number;
  /** When a down trunk may take its next (probe) call. */
  retryAt: number;
  /** A probe call is in flight: no other call goes to the down trunk meanwhile. */
  probing: boolean;
  /** When that probe was handed out (a probe never reported lapses after probeTimeoutMs). */
  probeAt: number;
  /** Smooth weighted round-robin state (nginx's algorithm). */
  current: number;
  /** OPTIONS pings watch it: a down trunk gets no probe call, an answered ping brings it back. */
  pinged: boolean;
  /** Calls holding a slot (acquire() to release()), in this process. */
  calls: number;
  /** Calls waiting for a slot, first come first served. */
  readonly waiters: (() => void)[];
  /** An operator took it out of service (engine/trunk-admin.ts): no new call. */
  disabled: boolean;
  /** sip.trunkLimits cluster: the trunk's calls in every worker process, as Redis last said (with this one's since). */
  clusterCalls: number;
  /** sip.trunkLimits cluster: channels are being asked for in Redis. */
  asking: boolean;
  /** sip.trunkLimits cluster: the last ask got fewer channels than it wanted (its waiters wait for a channel, not for Redis). */
  refused: boolean;
  /** sip.trunkLimits cluster: the next ask while calls wait for a channel another worker holds. */
  retry: NodeJS.Timeout | undefined;
  /** sip.trunkLimits cluster: other workers whose calls asked for a channel in vain lately, as Redis last said. */
  othersWaiting: number;
  /** sip.trunkLimits cluster: this worker gave a channel back for a fair share; its calls ask again from then. */
  yieldUntil: number;
}

const DEFAULT_HEALTH: TrunkHealthOptions = { failuresToMarkDown: 3, retryAfterMs: 5000, maxRetryAfterMs: 60_000 };

/**
 * Chooses the trunk of each call and paces calls to each trunk's CPS. One
 * pacer per worker process, shared by every channel, so flash and voice calls
 * together stay within a trunk's `cps`.
 *
 * Health: a trunk whose calls end `unreachable`/`timeout` `failuresToMarkDown`
 * times in a row is marked down and gets no traffic; after `retryAfterMs` one
 * call (the probe) goes to it again: any SIP response brings it back up, a
 * failure doubles the wait (up to `maxRetryAfterMs`). Calls go to the live
 * trunks of the lowest `priority`, shared by `weight`; when every trunk is
 * down, the one due first is tried anyway (failing fast is better than not
 * calling at all).
 *
 * Routes: a trunk with `prefixes` takes the calls to numbers starting with one of them; a number goes to the trunks of
 * the longest prefix it starts with, else to the trunks without prefixes (the default route), and priority, weight,
 * health and channels choose among those only, as SMSCs are chosen (sms/gateway.ts).
 *
 * Channels: a trunk with `maxCalls` (a carrier's limit of concurrent calls on the interconnect; this process's own
 * without `cluster`, as `cps` then is) carries at most that many calls at once, from `acquire()` to `release()`. `pick()` passes a full trunk
 * over for another of the same priority with a free slot, then for one of the next priorities; when every live trunk
 * is full, the best one is picked and its calls wait for a slot there, first come first served (`acquire()`, before
 * the CPS token, so that the calls a freed slot lets go still leave at the trunk's CPS).
 *
 * With `cluster` (sip.trunkLimits: cluster, engine/cluster-limits.ts), `cps` and `maxCalls` are the trunk's across
 * every worker process: CPS slots are reserved in Redis, and channels are counted there. A channel freed here goes to
 * this worker's next waiter at once; calls waiting for a channel another worker holds ask again every `pollMs`.
 * Each ask notes in Redis that this worker's calls wait; while another worker's calls wait too, a worker holding
 * more than its fair share (the cap over the workers waiting) gives a freed channel back to the cluster instead of to
 * its own next call (`overShare()`), so that no worker's calls wait while another's keep every channel. `start()`
 * renews this worker's lease on its channels; `close()` gives them up.
 *
 * A trunk watched by OPTIONS pings (`setPinged`, engine/trunk-pinger.ts) has its pings reported here like
 * calls: unanswered ones count with failed calls towards `failuresToMarkDown`, an answered one brings it back at
 * once. Down, it gets no probe call (no customer call is spent to learn it is back), except when every trunk is
 * down.
 */
export class TrunkPacer {
  private readonly buckets = new Map<string, TokenBucket>();
  private readonly health: Health[];
  /** The worker is stopping (drain()): channels are no longer waited for. */
  private draining = false;
  private heartbeat: NodeJS.Timeout | undefined;
  /** Some trunk has `prefixes`: calls are routed by destination (route()). */
  private readonly prefixed: boolean;
  /** Some trunk is disabled (setDisabled). */
  private someDisabled = false;

  constructor(
    trunks: readonly TrunkConfig[],
    private readonly options: TrunkHealthOptions = DEFAULT_HEALTH,
    private readonly onChange: TrunkChangeListener = () => undefined,
    private readonly now: () => number = Date.now,
    /** sip.trunkLimits: cluster: `cps` and `maxCalls` counted in Redis across worker processes. */
    private readonly cluster?: ClusterLimits,
  ) {
    if (trunks.length === 0) throw new Error('TrunkPacer needs at least one trunk');
    this.health = trunks.map((trunk) => ({
      trunk,
      up: true,
      failures: 0,
      backoffMs: options.retryAfterMs,
      retryAt: 0,
      probing: false,
      probeAt: 0,
      current: 0,
      pinged: false,
      calls: 0,
      waiters: [],
      disabled: false,
      clusterCalls: 0,
      othersWaiting: 0,
      yieldUntil: 0,
      asking: false,
      refused: false,
      retry: undefined,
    }));
    this.prefixed = trunks.some((t) => (t.prefixes ?? []).length > 0);
  }

  /**
   * The trunks that route `to` (sip.trunks[].prefixes): those with the longest prefix it starts with, else those
   * without prefixes (the default route); every trunk when none has prefixes, or `to` is not given. Empty: no route.
   */
  private route(to: string | undefined, allowed: readonly string[] | undefined): Health[] {
    const pool = allowed === undefined && !this.someDisabled ? this.health : this.health.filter((h) => !h.disabled && (allowed === undefined || allowed.includes(h.trunk.name)));
    if (to === undefined || !this.prefixed) return pool;
    return routeByPrefix(pool, to, (h) => h.trunk.prefixes);
  }

  /**
   * Some trunk routes `to` (sip.trunks[].prefixes): see route(). `allowed`: among these trunks only (a DID range's
   * `trunks`), routed by prefix among themselves.
   */
  routes(to: string, allowed?: readonly string[]): boolean {
    return this.route(to, allowed).length > 0;
  }

  /**
   * The trunk for the next call, to `to` when given (among the trunks that route it, of `allowed` when given:
   * routes(to, allowed) must be true). Report how the call ended with `report()`.
   */
  pick(to?: string, allowed?: readonly string[]): TrunkConfig {
    const candidates = this.route(to, allowed);
    if (candidates.length === 0) throw new Error('no trunk routes this destination');
    const now = this.now();
    // A down trunk whose back-off is over gets the next call: the probe. A probe never reported
    // (its job died before report()) lapses, so the trunk cannot stay unprobed for good.
    const probeTimeout = this.options.probeTimeoutMs ?? this.options.maxRetryAfterMs;
    const due = candidates.find((h) => !h.up && !h.pinged && (!h.probing || now - h.probeAt >= probeTimeout) && h.retryAt <= now && !this.full(h));
    if (due) {
      due.probing = true;
      due.probeAt = now;
      return due.trunk;
    }
    const live = candidates.filter((h) => h.up);
    if (live.length === 0) {
      // Everything is down: try the one whose retry comes first.
      const first = [...candidates].sort((a, b) => a.retryAt - b.retryAt)[0]!;
      return first.trunk;
    }
    return this.choose(live);
  }

  /**
   * Route advance (sip.routeAdvance): a live trunk other than those of `tried` for a call refused before it rang,
   * among those that route `to`, chosen as pick() chooses (a free channel first, the lowest priority, by weight); none
   * left: undefined. A down trunk is never taken here (its probe is for a new call).
   */
  pickAnother(tried: ReadonlySet<string>, to?: string, allowed?: readonly string[]): TrunkConfig | undefined {
    const live = this.route(to, allowed).filter((h) => h.up && !tried.has(h.trunk.name));
    return live.length === 0 ? undefined : this.choose(live);
  }

  /** Among live trunks: those with a free slot, else all; the lowest priority; shared by weight (smooth round-robin). */
  private choose(live: Health[]): TrunkConfig {
    // The lowest priority with a free slot; every live trunk full: the lowest priority (its calls wait for a slot).
    const free = live.filter((h) => !this.full(h));
    const from = free.length > 0 ? free : live;
    const best = Math.min(...from.map((h) => h.trunk.priority ?? 0));
    const group = from.filter((h) => (h.trunk.priority ?? 0) === best);
    if (group.length === 1) return group[0]!.trunk;
    let total = 0;
    let chosen: Health | undefined;
    for (const h of group) {
      const w = h.trunk.weight ?? 1;
      h.current += w;
      total += w;
      if (!chosen || h.current > chosen.current) chosen = h;
    }
    chosen!.current -= total;
    return chosen!.trunk;
  }

  /**
   * The trunks an operator took out of service (engine/trunk-admin.ts): they get no new call, as if they routed no
   * number (route advance included); calls on them go on to their end.
   */
  setDisabled(names: ReadonlySet<string>): void {
    for (const h of this.health) h.disabled = names.has(h.trunk.name);
    this.someDisabled = this.health.some((h) => h.disabled);
  }

  /** OPTIONS pings watch `trunk` (or no longer do): see the class comment. */
  setPinged(trunk: TrunkConfig, pinged: boolean): void {
    const h = this.health.find((x) => x.trunk.name === trunk.name);
    if (h) h.pinged = pinged;
  }

  /**
   * The verdict of a call's outcome and final status, with this pacer's `failureStatuses` (trunkVerdict); `local`: the
   * call failed on this side (drachtio-server not connected, the stack stopping), which says nothing of the trunk.
   */
  verdictOf(outcome: string, sipStatus?: number, local?: boolean): TrunkVerdict {
    if (local) return 'neutral';
    return trunkVerdict(outcome, sipStatus, this.options.failureStatuses);
  }

  /** How a call (or OPTIONS ping) to `trunk` ended, for its health. */
  report(trunk: TrunkConfig, verdict: TrunkVerdict): void {
    const h = this.health.find((x) => x.trunk.name === trunk.name);
    if (!h) return;
    const now = this.now();
    if (verdict === 'neutral') {
      h.probing = false;
      return;
    }
    if (verdict === 'up') {
      h.failures = 0;
      h.probing = false;
      if (!h.up) {
        h.up = true;
        h.backoffMs = this.options.retryAfterMs;
        this.onChange(h.trunk.name, true, { failures: 0, retryInMs: 0, pinged: h.pinged });
      }
      return;
    }
    h.failures++;
    if (h.up && h.failures >= this.options.failuresToMarkDown) {
      h.up = false;
      h.backoffMs = this.options.retryAfterMs;
      h.retryAt = now + h.backoffMs;
      this.onChange(h.trunk.name, false, { failures: h.failures, retryInMs: h.pinged ? 0 : h.backoffMs, pinged: h.pinged });
    } else if (!h.up && h.probing) {
      // The probe failed too: wait twice as long before the next one.
      h.backoffMs = Math.min(h.backoffMs * 2, this.options.maxRetryAfterMs);
      h.retryAt = now + h.backoffMs;
      this.onChange(h.trunk.name, false, { failures: h.failures, retryInMs: h.backoffMs, pinged: h.pinged });
    }
    h.probing = false;
  }

  /**
   * Passes `step` (a step of a call picked for `trunk`, before its `report()`) through; when it
   * throws, the call is reported `neutral` first, so a probe whose job failed releases its trunk.
   */
  async guarded<T>(trunk: TrunkConfig, step: Promise<T>): Promise<T> {
    try {
      return await step;
    } catch (err) {
      this.report(trunk, 'neutral');
      throw err;
    }
  }

  /**
   * The worker is stopping: the calls waiting for a channel go at once, over `maxCalls`, and no call waits for one
   * from now on. Their jobs have claimed their deliveries (the dial is recorded), so a call that never left by the
   * end of the grace would fail `interrupted` rather than be placed by another worker; during the drain it is placed,
   * and CANCELled at its first ring as every ringing call is.
   */
  drain(): void {
    this.draining = true;
    for (const h of this.health) {
      // Each waiter was counted in `calls` when handed its slot: counted here as it leaves over the cap.
      const waiters = h.waiters.splice(0);
      for (const wake of waiters) {
        h.calls++;
        wake();
      }
      if (h.retry) clearTimeout(h.retry);
      if (this.cluster && waiters.length > 0) {
        h.clusterCalls += waiters.length;
        this.cluster.giveChannels(h.trunk, waiters.length);
      }
    }
  }

  /** Every trunk's health and calls (the `flashverify_trunk_up` and `flashverify_trunk_calls*` gauges). */
  status(): TrunkState[] {
    return this.health.map((h) => ({
      name: h.trunk.name,
      up: h.up,
      enabled: !h.disabled,
      calls: h.calls,
      // Under sip.trunkLimits cluster, calls waiting for Redis's answer to an ask are not waiting for a channel.
      waiting: this.cluster && h.trunk.maxCalls !== undefined && !h.refused ? 0 : h.waiters.length,
      maxCalls: h.trunk.maxCalls,
    }));
  }

  /**
   * Takes one of the trunk's call slots (`maxCalls`), waiting for one when all are held; resolves with the function
   * that gives it back (once; later calls do nothing). Give it back when the call has ended, whatever happened.
   */
  async acquire(trunk: TrunkConfig): Promise<() => void> {
    const h = this.health.find((x) => x.trunk.name === trunk.name);
    if (!h) return () => undefined;
    if (this.cluster && h.trunk.maxCalls !== undefined) return this.acquireShared(h, this.cluster);
    // A waiter is handed the slot of the call that gives one back: `calls` counts it already.
    if (!this.draining && (this.full(h) || h.waiters.length > 0)) await new Promise<void>((resolve) => h.waiters.push(resolve));
    else h.calls++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      // The slot goes to the call that waited longest, at once: nobody arriving meanwhile can take it.
      const next = h.waiters.shift();
      if (next) next();
      else h.calls--;
    };
  }

  /** acquire() of a capped trunk under sip.trunkLimits: cluster. */
  private async acquireShared(h: Health, cluster: ClusterLimits): Promise<() => void> {
    if (this.draining) {
      h.calls++;
      h.clusterCalls++;
      cluster.giveChannels(h.trunk, 1);
    } else {
      await new Promise<void>((resolve) => {
        h.waiters.push(resolve);
        if (h.waiters.length === 1) this.ask(h, cluster);
      });
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      // To this worker's call that waited longest, at once, unless other workers' calls wait too and this worker
      // holds more than its fair share: then back to the cluster, for theirs.
      if (h.waiters.length > 0 && !this.overShare(h)) return h.waiters.shift()!();
      h.calls--;
      h.clusterCalls = Math.max(0, h.clusterCalls - 1);
      cluster.giveChannels(h.trunk, -1);
      if (h.waiters.length > 0) {
        // This worker's calls ask again after the others have had two asks' time to take it.
        h.yieldUntil = performance.now() + 2 * cluster.pollMs;
        if (!h.asking) this.ask(h, cluster);
      }
    };
  }

  /**
   * sip.trunkLimits cluster: other workers' calls wait for a channel of the trunk, and this worker holds more than
   * its share (the cap over the workers waiting, this one included, rounded up): a channel it frees goes back to the
   * cluster rather than to its own next call. Without it, a worker with calls always waiting would keep every channel
   * it held, and another worker's calls would wait until their verifications expired.
   */
  private overShare(h: Health): boolean {
    if (h.othersWaiting === 0) return false;
    return h.calls > Math.ceil((h.trunk.maxCalls ?? 0) / (h.othersWaiting + 1));
  }

  /** Asks Redis for channels for the calls waiting for one; asks again every pollMs while some still wait. */
  private ask(h: Health, cluster: ClusterLimits): void {
    if (h.asking || this.draining) return;
    if (h.retry) clearTimeout(h.retry);
    h.retry = undefined;
    // It gave a channel back for a fair share: not before the others have had their turn to take it.
    const wait = h.yieldUntil - performance.now();
    if (wait > 0) {
      h.retry = setTimeout(() => this.ask(h, cluster), Math.ceil(wait));
      return;
    }
    h.asking = true;
    const max = h.trunk.maxCalls ?? 0;
    // The calls of this turn together.
    queueMicrotask(() => {
      const wanted = h.waiters.length;
      cluster.takeChannels(h.trunk, wanted, h.calls).then(
        ({ granted, total, others }) => {
          h.clusterCalls = total;
          h.othersWaiting = others;
          let given = 0;
          while (given < granted && h.waiters.length > 0) {
            given++;
            h.calls++;
            h.waiters.shift()!();
          }
          // Fewer waiters than asked for: some were handed a channel freed here meanwhile, or drained (over the cap,
          // counted there). The channels granted for them go back.
          if (given < granted) cluster.giveChannels(h.trunk, given - granted);
          h.refused = granted < wanted;
          this.asked(h, cluster, granted === wanted);
        },
        (err: Error) => {
          cluster.fellBack(h.trunk.name, 'channels', err, 'could not take trunk channels in Redis');
          while (h.calls < max && h.waiters.length > 0) {
            h.calls++;
            h.waiters.shift()!();
          }
          h.refused = h.waiters.length > 0;
          this.asked(h, cluster, false);
        },
      );
    });
  }

  private asked(h: Health, cluster: ClusterLimits, all: boolean): void {
    h.asking = false;
    if (h.waiters.length === 0 || this.draining) return;
    // Calls that came meanwhile ask now; those the trunk had no channel for, after pollMs.
    if (all) this.ask(h, cluster);
    else h.retry = setTimeout(() => this.ask(h, cluster), cluster.pollMs);
  }

  /**
   * sip.trunkLimits cluster: renews this worker's lease on the channels of its capped trunks, and reads their use
   * across the cluster for pick() (which also learns it from every call's ask), every second (or third of the lease).
   */
  start(): void {
    const cluster = this.cluster;
    if (!cluster || this.heartbeat) return;
    const capped = this.health.filter((h) => h.trunk.maxCalls !== undefined);
    if (capped.length === 0) return;
    const renew = () => {
      for (const h of capped) {
        cluster.takeChannels(h.trunk, 0, h.calls).then(
          ({ total, others }) => {
            h.clusterCalls = total;
            h.othersWaiting = others;
          },
          (err: Error) => cluster.fellBack(h.trunk.name, 'channels', err, 'could not renew this worker\'s trunk channels in Redis'),
        );
      }
    };
    renew();
    this.heartbeat = setInterval(renew, Math.max(1, Math.min(1000, Math.floor(cluster.leaseMs / 3))));
    this.heartbeat.unref();
  }

  /** Stops the lease's renewal and gives up this worker's channels in Redis (after its calls have ended). */
  async close(): Promise<void> {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
    for (const h of this.health) if (h.retry) clearTimeout(h.retry);
    if (this.cluster) await this.cluster.leave(this.health.filter((h) => h.trunk.maxCalls !== undefined).map((h) => h.trunk));
  }

  /** All of the trunk's slots are held (never for a trunk without `maxCalls`): across the cluster with `cluster`. */
  private full(h: Health): boolean {
    if (h.trunk.maxCalls === undefined) return false;
    return (this.cluster ? h.clusterCalls : h.calls) >= h.trunk.maxCalls;
  }

  /** Resolves when the trunk may take one more call. */
  take(trunk: TrunkConfig): Promise<void> {
    if (this.cluster) return this.cluster.take(trunk);
    let b = this.buckets.get(trunk.name);
    if (!b) {
      b = new TokenBucket(trunk.cps);
      this.buckets.set(trunk.name, b);
    }
    return b.take();
  }
}
