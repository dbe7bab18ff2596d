import { DelayedError, UnrecoverableError, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { AccountNotFoundError } from '../accounts/account-store.js';
import type { Config } from '../config/schema.js';
import type { Sealer } from '../crypto/sealer.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Keys } from '../store/keys.js';
import { scripts } from '../store/scripts.js';
import { isoSeconds } from '../verification/types.js';
import { WebhookAgents } from './webhook-agents.js';
import { WebhookBreaker, type WebhookGate } from './webhook-breaker.js';
import { markOrderDone, orderMember, orderMemberTime, type HeldJobs, type WebhookJobData } from './webhook-queue.js';
import { WebhookDeliveryError, postWebhook, signWebhook } from './webhook-sender.js';
import { WebhookHostCache } from './webhook-host-cache.js';
import { assertWebhookTarget, lookupAll, type ResolveAll } from './webhook-target.js';

export interface WebhookProcessorDeps {
  redis: Redis;
  keys: Keys;
  sealer: Sealer;
  config: Readonly<Config['webhooks']>;
  metrics: Metrics;
  logger: Logger;
  /** Name resolution of webhook hosts (default: the system's), behind the process's cache; tests inject a resolver. */
  resolveAll?: ResolveAll;
  /**
   * How long a direct send (sendNow) may wait in memory for a slot before it goes as a job instead (its stream entry
   * stays unacknowledged meanwhile: main.ts keeps the wait and the send well within events.claimIdleMs). Default 0.
   */
  directWaitMs?: number;
  /**
   * The webhook queue: when an event is done, the jobs of its request's later events that wait for it run at once
   * (promoteHeld) instead of at their next look. Without it they wait for that look (`webhooks.orderPollMs`, doubling).
   */
  heldJobs?: HeldJobs;
}

/** What one delivery needs, read in one round trip (prepareWebhook-4.lua). */
interface Prepared {
  gate: WebhookGate;
  /** The record's sealed phone number; null: the record is gone. */
  phoneEnc: string | null;
  recordStatus: string | null;
  /** at_<status> of FINAL_STATUSES, in that order. */
  finalAt: (string | null)[];
  /** The stream id of the event that gave the record its final status (none before it had one, or in records from before). */
  finalEvent: string | null;
  /** The account's sealed API secret; null: the account is gone. */
  secretEnc: string | null;
}

/** Adds `by` to `key`'s count, deleting it at 0. */
function count(counts: Map<string, number>, key: string, by: 1 | -1): void {
  const n = (counts.get(key) ?? 0) + by;
  if (n > 0) counts.set(key, n);
  else counts.delete(key);
}

/** A direct send waiting for a slot (WebhookProcessor.startOrWait). */
interface WaitingSend {
  d: WebhookJobData;
  since: number;
  resolve: (r: 'done' | 'queue' | 'retry') => void;
  reject: (err: unknown) => void;
}

/** How far into an account's waiting sends pump() looks for one whose request is not sending an earlier event. */
const STARTABLE_SCAN = 64;

/**
 * The first of an account's waiting sends that may start: its request is not sending an earlier event, and no
 * earlier waiting send of its request is passed over (a request's events go in order). -1: none within the scan.
 */
function startable(queue: readonly WaitingSend[], sending: ReadonlySet<string>): number {
  let passed: Set<string> | undefined;
  for (let i = 0; i < queue.length && i < STARTABLE_SCAN; i++) {
    const id = queue[i]!.d.request_id;
    if (!sending.has(id) && !passed?.has(id)) return i;
    (passed ??= new Set()).add(id);
  }
  return -1;
}

/** Direct sends waiting for a slot in one process, at most; more go as jobs. */
const DIRECT_WAITING_MAX = 5000;

/** Unsealed API secrets kept, by account and ciphertext (a new secret is a new ciphertext): at most this many. */
const SECRETS_KEPT = 1000;
/**
 * After a delivery, its bookkeeping (breaker, order set) is tried again after 100, 200 ... 1600 ms (about 3 s in all)
 * before the delivery returns; then in the background every BOOKKEEPING_BACKGROUND_MS, for as long as a later event
 * of the request would wait for it (webhooks.orderMaxWaitMs).
 */
const BOOKKEEPING_FIRST_WAIT_MS = 100;
const BOOKKEEPING_LAST_WAIT_MS = 1600;
const BOOKKEEPING_BACKGROUND_MS = 2000;

/**
 * Delivers webhooks: the documented payload, signed with the account's
 * current API secret, to the account's current webhook URL. Most go out at
 * once for the webhook consumer that read their event (sendNow); a BullMQ job
 * carries one that must wait or be retried (process).
 *
 * Order per request: one job per event (jobId = stream id, so retries and
 * dedup are plain BullMQ), and a per-request order set (Keys.webhookOrder) in
 * which the script that writes an event to the stream files it, in the same
 * step (writeEvent.lua). So the set knows every event of the request from
 * the moment it exists, including one a consumer has read but not handled yet
 * (slow, threw, or died until events.claimIdleMs reclaims it). A job whose
 * request has an earlier event not done yet moves itself back to delayed (not
 * an attempt) and looks again later, with doubling waits (orderPollMs, at
 * most 60 s): behind an event queued or in its retry back-off for as long as
 * that takes, so `sent` always reaches the receiver before `delivered` before
 * `verified`; behind one written but not handled yet, until
 * `webhooks.orderMaxWaitMs` after it was written, then the job is sent all
 * the same (a warning), and those events are no longer waited for: their
 * stream entries were trimmed (events.maxLen) before any consumer read them,
 * or their consumer is stuck. An event delivered, dropped or finally failed
 * is marked done, so it never blocks the later ones again, even when its
 * stream entry is handled a second time. The check is part of the one script a
 * delivery runs before it goes out (prepareWebhook-4.lua, with the breaker, the record and the secret);
 * scanning the consumer group's pending entries instead (XPENDING +
 * XRANGE per delivery) tripled Redis's time per request (BENCHMARKS.md).
 * We chose per-event jobs over one job per request draining a list because
 * BullMQ's jobId dedup cannot re-add a request's job while it is active, which
 * would lose a wake-up; per-event jobs keep each delivery's attempts and
 * failures visible on its own.
 */
export class WebhookProcessor {
  /**
   * Deliveries in flight in this process, per account, jobs' and direct sends' together: at most
   * `webhooks.accountConcurrency`, so that a dead receiver holds no more of the process's connections whichever way
   * its webhooks go. (Counted apart, a dead receiver held twice the cap: its direct sends and the jobs retrying them.)
   */
  private readonly inFlight = new Map<string, number>();
  /** Deliveries sent at once by this process's webhook consumer (sendNow), in flight: at most `webhooks.concurrency`. */
  private directInFlight = 0;
  /** Direct sends waiting for a slot, per account, in order (startOrWait). */
  private readonly waiting = new Map<string, WaitingSend[]>();
  private waitingCount = 0;
  private sweeper: NodeJS.Timeout | undefined;
  /** Requests with a direct send in hand here (sending or waiting), and those sending: a request's events go one at a time, in order. */
  private readonly requestsInHand = new Map<string, number>();
  private readonly requestsSending = new Set<string>();
  /** The per-account circuit breakers (the gauge of open ones reads it). */
  readonly breaker: WebhookBreaker;
  /** Keep-alive connections to the receivers, per origin (`webhooks.keepAliveMs`, `webhooks.maxSocketsPerHost`); the connection gauges read it. */
  readonly agents: WebhookAgents;
  /** Unsealed API secrets, keyed by account and sealed value: one AES-GCM open per secret, not per delivery. */
  private readonly secrets = new Map<string, string>();
  /**
   * The answers of receivers' hosts (one processor per process: the process's), used by the SSRF check before a
   * delivery and by its connect, and the cap on lookups in flight (`webhooks.dnsCacheMs`, `webhooks.maxLookups` ...).
   */
  readonly hosts: WebhookHostCache;

  constructor(private readonly deps: WebhookProcessorDeps) {
    const { config } = deps;
    this.agents = new WebhookAgents(config);
    this.hosts = new WebhookHostCache({
      resolveAll: deps.resolveAll ?? lookupAll,
      cacheMs: config.dnsCacheMs,
      negativeCacheMs: config.dnsNegativeCacheMs,
      staleMs: config.dnsStaleMs,
      // RFC 8767's client response timer, within the delivery's deadline: most of it is left for the receiver.
      staleWaitMs: Math.min(1000, Math.floor(config.timeoutMs / 4)),
      maxLookups: config.maxLookups,
      metrics: deps.metrics,
      logger: deps.logger,
    });
    // A probe that has not ended by then (its process died) lets another delivery probe.
    this.breaker = new WebhookBreaker(deps.redis, deps.keys, config.breaker, 2 * config.timeoutMs + 1000, deps.logger);
  }

  async process(job: Job<WebhookJobData>, token?: string): Promise<void> {
    const { keys, config } = this.deps;
    const d = job.data;
    const order = keys.webhookOrder(d.request_id);
    const member = orderMember(d.event_id);
    // Too old to be of use: given up for good (no retry), replayable by an operator.
    const queuedAt = d.replayed_at ?? d.tried_at ?? job.timestamp;
    if (Date.now() - queuedAt > config.maxAgeMs) {
      this.deps.metrics.webhookFailed(true);
      await this.markDone(order, member);
      const reason = `not delivered within webhooks.maxAgeMs (${config.maxAgeMs} ms) of being queued`;
      this.deps.logger.error({ request_id: d.request_id, event_id: d.event_id, account_id: d.account_id, event: d.event, attempts: job.attemptsMade }, `webhook given up: ${reason}`);
      throw new UnrecoverableError(reason);
    }
    // Per-account cap: an account whose receiver is slow or dead holds at most this many of the process's slots;
    // its other events step aside (no attempt spent) and the slot goes to the next job, another account's.
    const held = this.inFlight.get(d.account_id) ?? 0;
    if (held >= config.accountConcurrency) {
      return this.defer(job, token, Date.now() + Math.min(config.timeoutMs, 1000) * (0.5 + Math.random() / 2), 'account_limit');
    }
    count(this.inFlight, d.account_id, 1);
    try {
      const prepared = await this.prepare(d, order, member);
      // Delivered (or dropped, or given up) already: a job run again after its worker died, or one whose event was sent directly.
      if (prepared === 'done') return;
      if (!prepared) {
        // An earlier event of the request goes first: back to delayed (not an attempt), looking again later.
        const waits = d.waits ?? 0;
        await job.updateData({ ...d, waits: waits + 1 });
        await job.moveToDelayed(Date.now() + Math.min(60_000, config.orderPollMs * 2 ** waits), token);
        throw new DelayedError();
      }
      await this.attempt(job, token, order, member, prepared);
    } finally {
      count(this.inFlight, d.account_id, -1);
      // The slot may be what a direct send of the account waits for.
      if (this.waitingCount > 0) this.pump();
    }
  }

  /**
   * One round trip (prepareWebhook-4.lua): 'done' when the event itself is done already (delivered, dropped or given
   * up); undefined when an earlier event of the request must go first (one
   * queued, or one written less than `orderMaxWaitMs` ago that no consumer has handled yet); else the breaker's
   * gate and what the payload and signature are made from. Earlier events written longer ago and still not
   * handled are given up waiting for (marked done by the script), with a warning, and this one goes.
   */
  private async prepare(d: WebhookJobData, order: string, member: string): Promise<Prepared | 'done' | undefined> {
    const { redis, keys, config } = this.deps;
    const now = Date.now();
    const readAt = performance.now();
    const r = (await scripts.prepareWebhook.run(
      redis,
      [order, keys.account(d.account_id), keys.webhookBreaker(d.account_id), keys.verification(d.request_id)],
      [member, now, this.breaker.probeLeaseMs, config.orderMaxWaitMs, d.replayed_at === undefined ? '1' : '0', ...RECORD_FIELDS],
    )) as (string | number | null)[];
    if (r[0] === 'held') return undefined;
    if (r[0] === 'done') return 'done';
    const [state, url, until, failures, phoneEnc, recordStatus] = r as [string, string | null, number, number, string | null, string | null];
    const finalAt = r.slice(6, 6 + FINAL_STATUSES.length) as (string | null)[];
    const finalEvent = (r[6 + FINAL_STATUSES.length] ?? null) as string | null;
    const secretEnc = (r[4 + RECORD_FIELDS.length] ?? null) as string | null;
    const givenUp = r.slice(5 + RECORD_FIELDS.length) as string[];
    if (givenUp.length) {
      this.deps.logger.warn(
        { request_id: d.request_id, event_id: d.event_id, event: d.event, not_handled: givenUp, max_wait_ms: config.orderMaxWaitMs },
        'earlier events of the request never handled by a webhook consumer (trimmed from the stream?); webhook sent without them',
      );
    }
    if (state === 'probe') this.deps.logger.info({ account_id: d.account_id }, 'webhook breaker half-open: one probe delivery decides');
    const gateState = state === 'nourl' ? 'closed' : (state as WebhookGate['state']);
    return {
      gate: { url: url || null, state: gateState, until: Number(until), failing: Number(failures) > 0 || gateState !== 'closed', readAt },
      phoneEnc,
      recordStatus,
      finalAt,
      finalEvent,
      secretEnc,
    };
  }

  /** The account's API secret from its sealed value (read with the delivery): unsealed once per value. */
  private secret(accountId: string, sealed: string): string {
    const key = `${accountId}\n${sealed}`;
    let secret = this.secrets.get(key);
    if (secret === undefined) {
      if (this.secrets.size >= SECRETS_KEPT) this.secrets.clear();
      secret = this.deps.sealer.open(sealed, `secret:${accountId}`);
      this.secrets.set(key, secret);
    }
    return secret;
  }

  /** Closes the pooled connections (after the worker stopped taking jobs). */
  close(): void {
    this.agents.destroy();
  }

  /** Moves the job back to delayed until `until` without spending an attempt (it has not been tried). */
  private async defer(job: Job<WebhookJobData>, token: string | undefined, until: number, reason: 'account_limit' | 'breaker'): Promise<never> {
    this.deps.metrics.webhookDeferred(reason);
    await job.moveToDelayed(until, token);
    throw new DelayedError();
  }

  private async attempt(job: Job<WebhookJobData>, token: string | undefined, order: string, member: string, prepared: Prepared): Promise<void> {
    const { config } = this.deps;
    const d = job.data;
    const log = this.deps.logger.child({ request_id: d.request_id, event_id: d.event_id, account_id: d.account_id, attempt: job.attemptsMade + 1 + (d.attempts_before ?? 0) });
    // Read from Redis before every delivery (prepare), never cached (account-field-cache.ts is for the consumer): a
    // URL removed or changed by an operator gets no further delivery of this event, from any process.
    const { gate } = prepared;
    if (!gate.url) return this.dropNoUrl(d, order, member, log);
    if (gate.state === 'open') {
      // Spread over a quarter of the cool-off, so that the account's waiting events do not all wake at once.
      log.debug({ event: d.event, until: gate.until }, 'webhook breaker open; delivery deferred');
      return this.defer(job, token, gate.until + Math.random() * (config.breaker.coolOffMs / 4), 'breaker');
    }
    const final = job.attemptsMade + 1 + (d.attempts_before ?? 0) >= (job.opts.attempts ?? 1);
    try {
      await this.attemptOnce(d, gate.url, prepared, order, member, final, log);
    } catch (err) {
      // BullMQ counts only the job's own attempts: after the consumer's failed first try, the last is one sooner.
      if (final && d.attempts_before) throw new UnrecoverableError((err as Error).message);
      throw err;
    }
  }

  /**
   * Sends an event's webhook at once (`webhooks.direct`), from the webhook consumer that read its stream entry: no
   * BullMQ job for a webhook that goes out at the first try (in a webhooks process whose per-account cap the rate
   * never fills, a third of a job's CPU per webhook, BENCHMARKS.md). Same rules as a job's run: the order, the
   * breaker, the per-account cap and the record's final status (one prepareWebhook-4 round trip), then the first
   * attempt. What cannot go at once is handed back, and the consumer queues a job for it: 'queue' (an earlier event
   * of the request first, the account's breaker open, the account's or this process's direct slots still taken after
   * `directWaitMs`; or `webhooks.attempts` is 1, so that a failure lands in the failed set, where it can be replayed), 'retry'
   * (the first attempt failed, the breaker counted it: a job makes the other `webhooks.attempts` - 1, from
   * `webhooks.backoffMs` on). 'done': delivered, dropped or given up, its order entry done. Throws only when Redis
   * failed; the consumer then leaves the stream entry pending, to be handled again when reclaimed.
   */
  async sendNow(d: WebhookJobData): Promise<'done' | 'queue' | 'retry'> {
    const result = await this.startOrWait(d);
    this.deps.metrics.webhookDirect(result === 'queue' ? 'queued' : result);
    return result;
  }

  /**
   * At once when a direct slot and one of the account's are free; else in the account's turn, in this process's
   * memory, for at most `directWaitMs`. A job would wait for the same per-account slots, and at a rate the account's
   * slots cannot carry, webhooks turned into jobs (each deferred and re-polled, BENCHMARKS.md) cost more than they
   * carry and fall behind. After that wait, or with too many waiting, it goes as a job ('queue').
   */
  private startOrWait(d: WebhookJobData): Promise<'done' | 'queue' | 'retry'> {
    // A single attempt goes as a job: given up, it must be in BullMQ's failed set, where an operator replays it.
    if (this.deps.config.attempts <= 1) return Promise.resolve('queue');
    // An earlier event of the request in hand here (sending, or waiting): this one goes after it, not into a job
    // that would wait for it by polling Redis.
    const behind = this.requestsInHand.has(d.request_id);
    if (!behind && this.canStart(d.account_id)) return this.inHand(d, this.runNow(d));
    const waitMs = this.deps.directWaitMs ?? 0;
    if (waitMs <= 0 || this.waitingCount >= DIRECT_WAITING_MAX) return Promise.resolve('queue');
    return this.inHand(
      d,
      new Promise((resolve, reject) => {
        let queue = this.waiting.get(d.account_id);
        if (queue === undefined) this.waiting.set(d.account_id, (queue = []));
        queue.push({ d, since: Date.now(), resolve, reject });
        this.waitingCount++;
        if (this.sweeper === undefined) {
          this.sweeper = setInterval(() => this.sweep(), Math.max(20, Math.min(1000, waitMs / 10)));
          this.sweeper.unref();
        }
      }),
    );
  }

  /** Counts `d`'s request as in hand here until `sending` settles. */
  private inHand<T>(d: WebhookJobData, sending: Promise<T>): Promise<T> {
    count(this.requestsInHand, d.request_id, 1);
    const done = (): void => count(this.requestsInHand, d.request_id, -1);
    sending.then(done, done);
    return sending;
  }

  private canStart(accountId: string): boolean {
    const { config } = this.deps;
    return this.directInFlight < config.concurrency && (this.inFlight.get(accountId) ?? 0) < config.accountConcurrency;
  }

  private async runNow(d: WebhookJobData): Promise<'done' | 'queue' | 'retry'> {
    this.directInFlight++;
    count(this.inFlight, d.account_id, 1);
    this.requestsSending.add(d.request_id);
    try {
      return await this.tryNow(d);
    } finally {
      this.requestsSending.delete(d.request_id);
      this.directInFlight--;
      count(this.inFlight, d.account_id, -1);
      if (this.waitingCount > 0) this.pump();
    }
  }

  /**
   * Starts waiting sends whose account and this process have a slot free: accounts in turn, each one's in order. An
   * account whose next send's request is still sending an earlier event waits for that one.
   */
  private pump(): void {
    for (const [accountId, queue] of this.waiting) {
      if (this.directInFlight >= this.deps.config.concurrency) return;
      if (!this.canStart(accountId)) continue;
      const at = startable(queue, this.requestsSending);
      if (at < 0) continue;
      const [next] = queue.splice(at, 1) as [WaitingSend];
      this.waitingCount--;
      // To the back of the line of accounts (Map order), so that one account's burst does not starve the others.
      this.waiting.delete(accountId);
      if (queue.length) this.waiting.set(accountId, queue);
      this.runNow(next.d).then(next.resolve, next.reject);
    }
    this.stopSweeper();
  }

  /** Waiting sends older than `directWaitMs` go as jobs. */
  private sweep(): void {
    const before = Date.now() - (this.deps.directWaitMs ?? 0);
    for (const [accountId, queue] of this.waiting) {
      while (queue.length && queue[0]!.since <= before) {
        queue.shift()!.resolve('queue');
        this.waitingCount--;
      }
      if (!queue.length) this.waiting.delete(accountId);
    }
    this.stopSweeper();
  }

  private stopSweeper(): void {
    if (this.waitingCount > 0 || this.sweeper === undefined) return;
    clearInterval(this.sweeper);
    this.sweeper = undefined;
  }

  /** One direct send in its slots: prepare, then the first attempt. */
  private async tryNow(d: WebhookJobData): Promise<'done' | 'queue' | 'retry'> {
    const { keys } = this.deps;
    const order = keys.webhookOrder(d.request_id);
    const member = orderMember(d.event_id);
    const prepared = await this.prepare(d, order, member);
    if (prepared === 'done') return 'done';
    if (!prepared || prepared.gate.state === 'open') return 'queue';
    const log = this.deps.logger.child({ request_id: d.request_id, event_id: d.event_id, account_id: d.account_id, attempt: 1 });
    if (!prepared.gate.url) {
      await this.dropNoUrl(d, order, member, log);
      return 'done';
    }
    try {
      await this.attemptOnce(d, prepared.gate.url, prepared, order, member, false, log);
    } catch {
      return 'retry';
    }
    return 'done';
  }

  private async dropNoUrl(d: WebhookJobData, order: string, member: string, log: Logger): Promise<void> {
    log.info({ event: d.event }, 'webhook URL removed; event not sent');
    await this.markDone(order, member);
  }

  /**
   * One delivery attempt of an event the breaker lets go (closed, or this is the probe). Resolves once the event is
   * done with (delivered, or not sent on purpose). A failure is counted (breaker, metrics), marked done when `final`
   * (given up), and thrown.
   */
  private async attemptOnce(d: WebhookJobData, url: string, prepared: Prepared, order: string, member: string, final: boolean, log: Logger): Promise<void> {
    const { gate } = prepared;
    let sent: boolean;
    try {
      sent = await this.deliver(d, url, prepared, log);
    } catch (err) {
      if (err instanceof WebhookDeliveryError) {
        await this.breaker.failed(d.account_id, gate.state === 'probe', err.message).catch((e: Error) => log.warn({ err: e.message }, 'could not record the failure in the webhook breaker'));
      }
      this.deps.metrics.webhookFailed(final);
      if (final) {
        await this.markDone(order, member);
        log.error({ err: (err as Error).message, event: d.event }, 'webhook given up');
      } else {
        log.warn({ err: (err as Error).message, event: d.event }, 'webhook failed; will retry');
      }
      throw err;
    }
    // Delivered (or not sent on purpose): from here nothing may send it again. A Redis that fails the bookkeeping just
    // now is waited for a little; past that the event stays delivered, and a warning says what was not written.
    const bookkeeping = async (): Promise<void> => {
      if (sent) await this.breaker.succeeded(d.account_id, gate);
      else if (gate.state === 'probe') await this.breaker.releaseProbe(d.account_id);
      await this.markDone(order, member);
    };
    for (let wait = BOOKKEEPING_FIRST_WAIT_MS; ; wait *= 2) {
      try {
        await bookkeeping();
        return;
      } catch (err) {
        if (wait > BOOKKEEPING_LAST_WAIT_MS) {
          // Not given up: until it is written, the request's later events wait for this one (orderMaxWaitMs, 5 min).
          log.warn({ err: (err as Error).message, event: d.event, sent }, 'webhook done, but its breaker and order state could not be written yet (Redis); written in the background, not sent again');
          this.bookkeepLater(bookkeeping, log, d.event);
          return;
        }
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  /** The bookkeeping of a delivery done, tried again in the background until Redis takes it (or a later event would no longer wait for it). */
  private bookkeepLater(bookkeeping: () => Promise<void>, log: Logger, event: string): void {
    const until = Date.now() + this.deps.config.orderMaxWaitMs;
    const again = (): void => {
      setTimeout(() => {
        bookkeeping().then(
          () => log.info({ event }, 'webhook bookkeeping written after Redis came back; later events of the request go on'),
          (err: Error) => {
            if (Date.now() < until) return again();
            log.warn({ err: err.message, event }, 'webhook bookkeeping still not written; later events of the request are sent without waiting for it');
          },
        );
      }, BOOKKEEPING_BACKGROUND_MS).unref();
    };
    again();
  }

  /**
   * For the worker's 'failed' event. A job failed for good (`finishedOn`: not retried) leaves the pending events.
   * The attempt path marks its own final failure done (logged and counted) already; this is for a job BullMQ fails
   * without running it (stalled more than `worker.maxStalledCount` times: the processes running it died), which
   * would otherwise hold its request's later events until the order set expires, as a job that is still queued. One
   * still pending here was given up by nobody yet: it is logged and counted as the attempt path's are. (A request
   * whose account had no URL when it was created has no order set: such a job is not logged here.)
   */
  async failed(job: Job<WebhookJobData> | undefined): Promise<void> {
    if (!job?.finishedOn) return;
    const d = job.data;
    if (!(await this.markDone(this.deps.keys.webhookOrder(d.request_id), orderMember(d.event_id)))) return;
    this.deps.metrics.webhookFailed(true);
    this.deps.logger.error(
      { request_id: d.request_id, event_id: d.event_id, account_id: d.account_id, event: d.event, attempts: job.attemptsMade, err: job.failedReason },
      'webhook given up',
    );
  }

  /** Marks the event done (true when it was pending), waking the later events' jobs held for it. */
  private markDone(order: string, member: string): Promise<boolean> {
    const { redis, heldJobs, logger } = this.deps;
    return markOrderDone(redis, order, member, heldJobs && { jobs: heldJobs, logger });
  }

  /** Sends the event to `url`; false when it was not sent on purpose (record gone, contradicts the final status). */
  private async deliver(d: WebhookJobData, url: string, prepared: Prepared, log: Logger): Promise<boolean> {
    const { sealer, config } = this.deps;
    const { phoneEnc, recordStatus, finalAt, finalEvent, secretEnc } = prepared;
    if (!phoneEnc) {
      log.warn({ event: d.event }, 'verification record gone; event not sent');
      return false;
    }
    if (contradictsFinal(d, recordStatus ?? null, finalAt, finalEvent)) {
      this.deps.metrics.webhookSkipped();
      log.debug({ event: d.event, record_status: recordStatus }, 'event contradicts the final status; not sent');
      return false;
    }
    if (!secretEnc) throw new AccountNotFoundError(d.account_id);
    const body = JSON.stringify({
      event: d.event,
      request_id: d.request_id,
      phone_number: sealer.open(phoneEnc, `phone:${d.request_id}`),
      method: d.method,
      status: d.status,
      timestamp: isoSeconds(d.timestamp),
    });
    const secret = this.secret(d.account_id, secretEnc);
    // One deadline for the network part, name resolution included: a resolver that hangs holds this delivery's
    // slot no longer than a receiver that does not answer, and fails it the same way ("timeout", retried).
    const signal = AbortSignal.timeout(config.timeoutMs);
    const started = performance.now();
    const resolveAll = this.hosts.resolve;
    const target = await assertWebhookTarget(url, config.allowPrivate, resolveAll, signal).catch((err: Error) => {
      throw new WebhookDeliveryError(err.message);
    });
    const status = await postWebhook(
      target,
      body,
      {
        'content-type': 'application/json',
        'x-flashverify-signature': signWebhook(body, secret),
        'x-flashverify-timestamp': String(Math.floor(Date.now() / 1000)),
        'x-flashverify-event-id': d.event_id,
      },
      { timeoutMs: config.timeoutMs, allowPrivate: config.allowPrivate, resolveAll, signal, agents: this.agents },
    );
    if (status < 200 || status > 299) throw new WebhookDeliveryError(`receiver answered HTTP ${status}`);
    // Its stream id's time is when the event was written; a replay is an operator's, not a lag of the engine's.
    const writtenAt = orderMemberTime(orderMember(d.event_id));
    const lag = d.replayed_at === undefined && writtenAt > 0 ? Math.max(0, Date.now() - writtenAt) / 1000 : undefined;
    this.deps.metrics.webhookDelivered((performance.now() - started) / 1000, lag);
    log.info({ event: d.event, http_status: status, host: target.host }, 'webhook delivered');
    return true;
  }
}

/** The contract's final outcomes: verified, expired and failed are distinct, and canceled ends a request too. */
const FINAL_STATUSES = ['verified', 'expired', 'failed', 'canceled'] as const;
/**
 * What a delivery reads of the record (prepareWebhook-4.lua), in this order: the number, the status, when each final
 * status came, and the stream id of the event that gave it (`final_event`).
 */
const RECORD_FIELDS = ['phone_enc', 'status', ...FINAL_STATUSES.map((f) => `at_${f}`), 'final_event'];

/**
 * Whether sending `d` would contradict the final status the record already has: a final event other than that
 * status (a late `failed` receipt after `expired`), or a non-final one that happened at or after it (a delivery
 * receipt after `verified`). A `sent` or `delivered` from before the final status (its webhook in retry while the
 * user verified) still goes out, ahead of the final event, which waits behind it.
 *
 * "Before" is stream order when the record names its final event (`final_event`): Redis's one clock, on which the
 * api's `sent` and a worker's `failed` compare whatever the processes' clocks say. The events' own timestamps come
 * from the clocks of the processes that wrote them: a worker 300 ms behind the api would put a fast failure (busy,
 * unreachable) before its `sent`, and that `sent`, in retry, would never go out. Records from before `final_event`
 * (and a request failed by the api when it could not queue it) compare those timestamps.
 */
function contradictsFinal(d: WebhookJobData, status: string | null, finalAt: (string | null)[], finalEvent: string | null): boolean {
  const i = FINAL_STATUSES.indexOf(status as (typeof FINAL_STATUSES)[number]);
  if (i < 0) return false;
  if (finalEvent) {
    const self = orderMember(d.event_id);
    const final = orderMember(finalEvent);
    if ((FINAL_STATUSES as readonly string[]).includes(d.status)) return d.status !== status || (d.status === 'failed' && self > final);
    return self >= final;
  }
  const at = Number(finalAt[i] ?? 0);
  if ((FINAL_STATUSES as readonly string[]).includes(d.status)) {
    if (d.status !== status) return true;
    // A second `failed` of a request that has failed: the record's at_failed is the time of the event that failed it
    // (every script that fails a request writes both with one time), and this one came later: a worker that was
    // stopped past its job's lock (SIGSTOP, a long GC) reporting the call the next worker had already failed
    // (`interrupted`). Its receiver would get the end twice, under two event ids. Failed is the one final status
    // more than one writer reports; the others have one each.
    return d.status === 'failed' && at > 0 && d.timestamp > at;
  }
  return !at || d.timestamp >= at;
}
