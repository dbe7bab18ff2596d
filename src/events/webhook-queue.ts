import { Job, Queue, type ConnectionOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { connectionErrorLoggedElsewhere } from '../store/redis.js';

/** BullMQ queue of webhook deliveries, under `<redis.prefix>:bull`. */
export const WEBHOOK_QUEUE = 'webhook';

/** The events a webhook receives (FlashVerify docs, "Webhook Events"). */
export const WEBHOOK_EVENTS: ReadonlySet<string> = new Set([
  'verification.sent',
  'verification.delivered',
  'verification.verified',
  'verification.expired',
  'verification.failed',
  'verification.canceled',
]);

/**
 * One webhook delivery: a copy of the stream entry's routing fields. Never
 * the code, the API secret or the phone number: the number is read from the
 * sealed record and the secret from the account at delivery time.
 */
export interface WebhookJobData {
  /** Stream entry id: also the jobId (dedup) and X-FlashVerify-Event-Id. */
  event_id: string;
  event: string;
  request_id: string;
  account_id: string;
  method: string;
  status: string;
  /** When the event happened, ms since epoch. */
  timestamp: number;
  /** Times this job waited for an earlier event of its request (ordering back-off). */
  waits?: number;
  /** Attempts made before this job existed: the webhook consumer's own first try (WebhookProcessor.sendNow) failed. */
  attempts_before?: number;
  /** When that first try began (ms since epoch): the event's age (webhooks.maxAgeMs) counts from then. */
  tried_at?: number;
  /** When an operator replayed it after it was given up (ms since epoch): its age (webhooks.maxAgeMs) counts from then. */
  replayed_at?: number;
}

export interface WebhookRetryOptions {
  attempts: number;
  backoffMs: number;
}

/**
 * A member of `Keys.webhookOrder`: the stream id padded so that lexical order
 * is stream order (ms then sequence). The Lua scripts that write events pad it
 * the same way (lua/includes/writeEvent.lua).
 */
export function orderMember(eventId: string): string {
  const [ms = '0', seq = '0'] = eventId.split('-');
  return `${ms.padStart(15, '0')}-${seq.padStart(10, '0')}`;
}

/** The stream id (the event's id, its webhook job's id) of an order member. */
export function orderMemberEventId(member: string): string {
  const [ms = '0', seq = '0'] = member.split('-');
  return `${Number(ms)}-${Number(seq)}`;
}

/** When (ms since epoch, Redis's clock) the event of an order member was written: its stream id's time. */
export function orderMemberTime(member: string): number {
  return Number(member.slice(0, 15));
}

/**
 * Scores in `Keys.webhookOrder`. An event is filed WRITTEN by the script that writes it to the stream; the webhook
 * consumer that handles it makes it QUEUED (its job exists) or DONE (no webhook for it); a delivery that finds an
 * earlier event of its request pending makes it HELD (woken when that one is done); the processor makes it DONE
 * once delivered, dropped or given up. Scores only go up (ZADD GT / XX), so a redelivered stream entry never puts
 * a done event back among the pending ones.
 */
export const ORDER_WRITTEN = -1;
export const ORDER_QUEUED = 0;
/** Its delivery found an earlier event pending and stepped back (prepareWebhook-4): woken when that one is done. */
export const ORDER_HELD = 0.5;
export const ORDER_DONE = 1;

/** What runs held webhook jobs at once (WebhookQueue.promoteHeld). */
export interface HeldJobs {
  promoteHeld(eventIds: readonly string[]): Promise<number>;
}

/**
 * Marks an event of the order set done: it no longer holds back its request's later events, and a redelivered
 * stream entry cannot make it pending again (its QUEUED is ZADD GT). XX: never creates the set, whose TTL the
 * script that writes the request's first event sets. True when the event was filed and not done yet.
 *
 * With `wake`, the jobs of the request's later events that stepped back for it (ORDER_HELD) run at once instead of at
 * their next look (`webhooks.orderPollMs`, doubling); they are read in the same round trip as the mark (one write,
 * autopipelined). A wake-up that fails is logged: they then look again at their own time.
 */
export async function markOrderDone(
  redis: Pick<Redis, 'zadd' | 'zrangebyscore'>,
  order: string,
  member: string,
  wake?: { jobs: HeldJobs; logger: Logger },
): Promise<boolean> {
  const [changed, held] = await Promise.all([
    redis.zadd(order, 'XX', 'CH', ORDER_DONE, member),
    wake ? redis.zrangebyscore(order, ORDER_HELD, ORDER_HELD) : undefined,
  ]);
  const later = held?.filter((m) => m > member) ?? [];
  if (wake && later.length) {
    await wake.jobs.promoteHeld(later.map(orderMemberEventId)).catch((err: Error) =>
      wake.logger.warn({ err: err.message }, 'could not wake the webhooks waiting for this one; they look again at their own time'),
    );
  }
  return Number(changed) > 0;
}

/** Events written up to this long after their request expires are filed in its order set (a later one, rare, is not waited for). */
const ORDER_FILED_AFTER_EXPIRY_MS = 3600_000;
/** The order set outlives the last event it may file by this: the retries of that event's webhook (~22 h by default). */
const ORDER_KEPT_AFTER_FILING_S = 24 * 3600;

/**
 * How long a request's webhook order set lives, from its creation with the request (createVerification-9):
 * `recordUntil`, the record's `whq_until`, until when its events are filed (ms since epoch), and the set's TTL.
 */
export function webhookOrderLife(now: number, expiresAt: number): { recordUntil: number; ttlSeconds: number } {
  const recordUntil = expiresAt + ORDER_FILED_AFTER_EXPIRY_MS;
  return { recordUntil, ttlSeconds: Math.ceil((recordUntil - now) / 1000) + ORDER_KEPT_AFTER_FILING_S };
}

export class WebhookQueue implements HeldJobs {
  readonly queue: Queue<WebhookJobData>;

  constructor(
    connection: ConnectionOptions,
    prefix: string,
    private readonly retry: WebhookRetryOptions,
  ) {
    this.queue = new Queue<WebhookJobData>(WEBHOOK_QUEUE, { connection, prefix });
    this.queue.on('error', connectionErrorLoggedElsewhere);
  }

  /**
   * Adds a delivery; adding the same event twice (a reclaimed stream entry) is a no-op. `afterFailedTry`: the
   * consumer's own first try, begun at `triedAt`, failed; the job makes the other attempts, the first after
   * `backoffMs`, each wait then twice the one before, as if the first try had been the job's.
   */
  async add(data: WebhookJobData, afterFailedTry?: { triedAt: number }): Promise<void> {
    const { attempts, backoffMs } = this.retry;
    await this.queue.add(WEBHOOK_QUEUE, afterFailedTry ? { ...data, attempts_before: 1, tried_at: afterFailedTry.triedAt } : data, {
      jobId: data.event_id,
      // All of them: the processor counts the first try (attempts_before) and fails the job for good after the last,
      // and a replay (which resets the job's own count and drops attempts_before) gets them all again.
      attempts,
      // (A replay keeps these options: its waits are then twice as long, from 2 × backoffMs.)
      backoff: { type: 'exponential', delay: afterFailedTry ? 2 * backoffMs : backoffMs },
      ...(afterFailedTry ? { delay: backoffMs } : {}),
      // Kept an hour so a re-handled stream entry still finds it (dedup), failures a week for inspection.
      removeOnComplete: { age: 3600, count: 10_000 },
      removeOnFail: { age: 7 * 24 * 3600 },
    });
  }

  /**
   * Runs now the jobs of `eventIds` that are delayed only because an earlier event of their request was not done
   * (never attempted, `waits` > 0): called when that earlier one is done, so that the later one goes at once instead
   * of at its next look (`webhooks.orderPollMs`, doubling). A job in retry back-off, deferred by the breaker or the
   * account's cap, or not delayed at all, is left as it is. The number promoted.
   */
  async promoteHeld(eventIds: readonly string[]): Promise<number> {
    let promoted = 0;
    for (const id of eventIds) {
      const job = await Job.fromId<WebhookJobData>(this.queue, id);
      if (!job || job.attemptsMade > 0 || !(job.data.waits ?? 0)) continue;
      // Not delayed (waiting, active, done): BullMQ refuses; nothing to do.
      await job.promote().then(
        () => promoted++,
        () => undefined,
      );
    }
    return promoted;
  }

  async close(): Promise<void> {
    await this.queue.close();
  }
}
