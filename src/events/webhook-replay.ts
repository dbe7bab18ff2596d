import type { Job, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Keys } from '../store/keys.js';
import { ORDER_QUEUED, orderMember, type WebhookJobData } from './webhook-queue.js';

/** One given-up webhook, as `flashverify webhook failed` prints it (one JSON line each). */
export interface GivenUpWebhook {
  request_id: string;
  event: string;
  /** The stream id: the job id and the `X-FlashVerify-Event-Id` the receiver gets again on a replay. */
  event_id: string;
  /** When the last attempt failed (ISO 8601). */
  failed_at: string;
  /** Why the last attempt failed (`timeout: no answer within 5000 ms`, `receiver answered HTTP 500` ...). */
  last_error: string;
  /** Attempts made before it was given up. */
  attempts: number;
}

export interface GivenUpFilter {
  accountId: string;
  requestId?: string;
  /** Only those given up at or after this time (ms since epoch). */
  since?: number;
}

/** Failed jobs are read from BullMQ's failed set this many at a time. */
const PAGE = 1000;

/**
 * The webhook jobs of an account that were given up (every attempt failed, or stalled beyond BullMQ's limit):
 * BullMQ's failed set of the `webhook` queue, where each stays `removeOnFail` (7 days, webhook-queue.ts) and is
 * removed at a later failure after that. Oldest first.
 */
export async function givenUpWebhooks(queue: Queue<WebhookJobData>, filter: GivenUpFilter): Promise<Job<WebhookJobData>[]> {
  const found: Job<WebhookJobData>[] = [];
  for (let start = 0; ; start += PAGE) {
    const page = await queue.getFailed(start, start + PAGE - 1);
    for (const job of page) {
      // A job removed between the listing and its read comes back undefined.
      if (!job?.data || job.data.account_id !== filter.accountId) continue;
      if (filter.requestId !== undefined && job.data.request_id !== filter.requestId) continue;
      if (filter.since !== undefined && (job.finishedOn ?? 0) < filter.since) continue;
      found.push(job);
    }
    if (page.length < PAGE) break;
  }
  return found.sort((a, b) => (a.finishedOn ?? 0) - (b.finishedOn ?? 0));
}

export function describeGivenUp(job: Job<WebhookJobData>): GivenUpWebhook {
  return {
    request_id: job.data.request_id,
    event: job.data.event,
    event_id: job.data.event_id,
    failed_at: new Date(job.finishedOn ?? 0).toISOString(),
    last_error: job.failedReason ?? '',
    // With the webhook consumer's own first try, when it sent the event at once and that failed.
    attempts: job.attemptsMade + (job.data.attempts_before ?? 0),
  };
}

/** A replayed event's order set lives at least this long (its retries' span), even when it had expired. */
const REPLAY_ORDER_TTL_S = 24 * 3600;

/**
 * Queues given-up webhooks again, each with all its attempts (`webhooks.attempts` as when it was first queued) and
 * no order waits counted. Each keeps its job and event id; its body is built and signed at send time, as every
 * delivery is, with the account's current secret and URL. They still follow the order and final-status rules: each
 * waits for an earlier event of its request still pending, and is not sent if it contradicts the final status.
 *
 * First every one of them is made pending again (ORDER_QUEUED) in its request's order set, which was left DONE when
 * it was given up, then their jobs run: otherwise two replayed events of one request (a `sent` and a `failed` given
 * up together) would not wait for each other, and a `failed` could reach the receiver before its `sent`. An order
 * set that has expired meanwhile is made again with the replayed events alone.
 */
export async function replayGivenUp(redis: Pick<Redis, 'pipeline'>, keys: Keys, jobs: readonly Job<WebhookJobData>[]): Promise<void> {
  const orders = [...new Set(jobs.map((j) => keys.webhookOrder(j.data.request_id)))];
  const pending = redis.pipeline();
  for (const job of jobs) pending.zadd(keys.webhookOrder(job.data.request_id), ORDER_QUEUED, orderMember(job.data.event_id));
  for (const order of orders) pending.ttl(order);
  const results = (await pending.exec()) ?? [];
  const expiring = redis.pipeline();
  orders.forEach((order, i) => {
    const ttl = Number(results[jobs.length + i]?.[1]);
    // -1: made just now, without a TTL (the set had expired); or one shorter than the replays' retries.
    if (!(ttl >= REPLAY_ORDER_TTL_S)) expiring.expire(order, REPLAY_ORDER_TTL_S);
  });
  if (expiring.length > 0) await expiring.exec();
  for (const job of jobs) {
    const { waits: _waits, attempts_before: _tried, tried_at: _triedAt, ...data } = job.data;
    // Its age (webhooks.maxAgeMs) counts from now: a webhook given up for its age would otherwise be given up again.
    await job.updateData({ ...data, replayed_at: Date.now() });
    await job.retry('failed', { resetAttemptsMade: true, resetAttemptsStarted: true });
  }
}
