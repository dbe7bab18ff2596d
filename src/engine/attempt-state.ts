import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { TrunkConfig } from '../config/schema.js';
import type { DeliveryEvent, EventPublisher } from '../events/event-publisher.js';
import type { Keys } from '../store/keys.js';
import { untilTaken } from '../store/redis.js';
import { scripts } from '../store/scripts.js';
import { expireRequest } from '../verification/expiry-sweeper.js';
import { onAbort } from './abort-fanout.js';
import type { ShutdownSignals } from './flash-call.js';
import type { TrunkPacer } from './trunk-pacer.js';

/**
 * Writes fields of a delivery attempt (call outcome, final SIP status,
 * rang_at / answered_at) only while it is still the request's current attempt
 * (recordAttemptFields-1.lua): a call of workflow step n that ends after the
 * request moved on to step n+1 leaves step n+1's fields alone. Returns false
 * when the request had moved on.
 */
export async function recordAttemptFields(redis: Redis, key: string, step: number | undefined, fields: Record<string, string>): Promise<boolean> {
  const flat = Object.entries(fields).flat();
  return (await scripts.recordAttemptFields.run(redis, [key], [step === undefined ? '' : String(step), ...flat])) === 1;
}

/**
 * The record's `dial_job` written by a call's run once it has its trunk channel and CPS token, as its INVITE leaves:
 * the job's id. A re-run of that job (its worker died) that finds another value (or none) knows the call never left.
 */
export function dialMark(jobId: string | undefined): string {
  return jobId ?? 'run';
}

/**
 * What a call's job, run again after its worker died, makes of the attempt (claimDelivery's `resume`): 'done' when the
 * call got through (`doneField` set: rang_at, answered_at), 'interrupted' when it may have left (its dial mark),
 * 'unsent' when it never did. Read with the claim: `doneField` and `dial_job`.
 */
export function callResume(jobId: string | undefined, doneField: string): (extra: Record<string, string | null>) => 'done' | 'interrupted' | 'unsent' {
  const mark = dialMark(jobId);
  return (extra) => (extra[doneField] ? 'done' : extra.dial_job === mark ? 'interrupted' : 'unsent');
}

/**
 * Writes the dial mark (dialMark) as the INVITE leaves: sent, not awaited, so that it costs the call no round trip
 * (it goes out with the next batch of commands, microseconds after the INVITE). A workflow step's only while it is
 * the request's step (recordAttemptFields).
 */
export function markDialing(redis: Redis, key: string, step: number | undefined, jobId: string | undefined, log: Logger): void {
  const mark = dialMark(jobId);
  const write = step === undefined ? untilTaken(redis, () => redis.hset(key, 'dial_job', mark)) : recordAttemptFields(redis, key, step, { dial_job: mark });
  write.catch((err: Error) => log.warn({ err: err.message }, 'could not write the dial mark (a crash now would refund this call)'));
}

/** How often a call in progress looks whether its request still wants it (canceled, verified, step timed out ...). */
export const WATCH_INTERVAL_MS = 1000;

/** A signal that never aborts (no worker shutdown to follow). */
const NEVER = new AbortController().signal;

/**
 * After a call's wait for its trunk's CPS token, before it is dialled: the watch of its attempt (see AttemptWatch),
 * or undefined when its request (or workflow step) ended during that wait (canceled, expired, step over). Such a
 * call is not placed: the watch is stopped, the trunk released (a probe of a down trunk that was not placed), the
 * attempt's outcome recorded `request_ended`, and a refunded failure event gives its price back (the status
 * consumer refunds it once, whatever the status is by now). One piece for the flash and voice processors.
 */
export async function watchUnlessEnded(
  deps: {
    redis: Redis;
    keys: Keys;
    config: { readonly events: { readonly maxLen: number } };
    events: EventPublisher;
    trunks: Pick<TrunkPacer, 'report'>;
    shutdown?: ShutdownSignals;
  },
  key: string,
  base: Omit<DeliveryEvent, 'status' | 'detail'>,
  trunk: TrunkConfig,
  claimedAt: number,
  log: Logger,
): Promise<AttemptWatch | undefined> {
  const watch = new AttemptWatch(deps.redis, key, base.step, WATCH_INTERVAL_MS, deps.shutdown?.expiring);
  if (await watch.stillWantedAfterWait(claimedAt)) return watch;
  watch.stop();
  deps.trunks.report(trunk, 'neutral');
  log.info({ waited_ms: Date.now() - claimedAt, past_expiry: watch.pastExpiry || undefined }, 'request ended while the call waited for its trunk; not dialled');
  await recordAttemptFields(deps.redis, key, base.step, { outcome: 'request_ended' });
  if (watch.pastExpiry) {
    // Its time ran out during the wait, not yet swept: it expires now, as the sweeper would make it, with the attempt
    // refunded: its claim is taken back first (no dial_started: nothing of it left, refundUnsent.lua).
    await untilTaken(deps.redis, () => deps.redis.hdel(key, 'dial_started', 'dial_job'));
    const verdict = await expireRequest(deps.redis, deps.keys, base.request_id, Date.now(), deps.config.events.maxLen);
    if (verdict === 'expired') return undefined;
    // The sweeper (or a cancel) ended it first, with the claim still there: the refunded failure below gives the
    // attempt back, once, whatever the status (applyEvent-4).
  }
  await deps.events.publish({ ...base, status: 'failed', detail: { reason: 'request_ended', refund: true } });
  return undefined;
}

/**
 * Watches, while a call is in progress, whether its attempt is still wanted:
 * the request still `sent` or `delivered` (not canceled, verified, expired,
 * failed) and, for a workflow, still at the call's step (not timed out). When
 * it is not, `signal` aborts, so the call is CANCELled if not answered, or its
 * announcement stopped and hung up (BYE) if answered: a code nobody may use
 * any more is never read out. Also aborts when `also` does (the worker's
 * shutdown). One HMGET per `intervalMs` per call, and one on `check()`.
 */
export class AttemptWatch {
  private readonly controller = new AbortController();
  private readonly timer: NodeJS.Timeout;
  private readonly unlisten: () => void;
  /** True once this watch (not `also`) ended the attempt. */
  ended = false;
  /** The attempt ended because its request's time ran out (`expires_at` passed) while its status was still live. */
  pastExpiry = false;

  constructor(
    private readonly redis: Redis,
    private readonly key: string,
    private readonly step: number | undefined,
    intervalMs: number,
    also?: AbortSignal,
  ) {
    this.unlisten = also ? onAbort(also, () => this.controller.abort()) : () => undefined;
    this.timer = setInterval(() => void this.check(), intervalMs);
    this.timer.unref();
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** The call's signals: the worker's `draining` as it is, `expiring` from this watch (which follows the worker's too). */
  callSignals(shutdown: ShutdownSignals | undefined): ShutdownSignals {
    return { draining: shutdown?.draining ?? NEVER, expiring: this.controller.signal };
  }

  /** Reads the request now; false (and `signal` aborted) when the attempt is no longer wanted. A Redis error keeps the call. */
  async check(): Promise<boolean> {
    if (this.ended) return false;
    const read = await this.redis.hmget(this.key, 'status', 'wf_step', 'expires_at').catch(() => undefined);
    if (!read) return true;
    const [status, wfStep, expiresAt] = read;
    const live = (status === 'sent' || status === 'delivered') && (this.step === undefined || Number(wfStep) === this.step);
    // Past its expiry, not swept yet: as good as expired (the sweeper runs every verification.expirySweepMs).
    const pastExpiry = live && expiresAt !== null && Date.now() >= Number(expiresAt);
    const current = live && !pastExpiry;
    if (!current && !this.ended) {
      this.pastExpiry = pastExpiry;
      this.ended = true;
      this.controller.abort();
    }
    return current;
  }

  /**
   * Before dialling: whether the attempt is still wanted after the wait for the trunk's CPS token, which can be
   * long under a backlog. The claim checked the request `waitedSinceMs` ago; a wait shorter than
   * RECHECK_AFTER_WAIT_MS is taken as no wait (no round trip on the hot path), a longer one reads the request.
   */
  async stillWantedAfterWait(waitedSinceMs: number, now = Date.now()): Promise<boolean> {
    if (now - waitedSinceMs < RECHECK_AFTER_WAIT_MS) return !this.ended;
    return this.check();
  }

  stop(): void {
    clearInterval(this.timer);
    this.unlisten();
  }
}

/** A wait for a CPS token longer than this is followed by a read of the request before the call is placed. */
export const RECHECK_AFTER_WAIT_MS = 200;
