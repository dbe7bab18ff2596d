import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { AccountFieldCache } from '../accounts/account-field-cache.js';
import type { Keys } from '../store/keys.js';
import { GroupConsumer, type GroupConsumerOptions, type StreamEntry } from './group-consumer.js';
import { WEBHOOK_EVENTS, orderMember, type WebhookJobData } from './webhook-queue.js';

/** Where webhook deliveries go (a BullMQ queue in production). */
export interface WebhookJobs {
  add(data: WebhookJobData): Promise<void>;
}

/** Longer than the whole retry window (~1 day), so a stuck request's order set cannot outlive its jobs by much. */
const ORDER_TTL_SECONDS = 3 * 24 * 3600;

/**
 * Turns events of the stream into webhook jobs, in its own consumer group
 * (`events.webhookGroup`), for accounts that have a `webhook_url`. Each event
 * is also filed in its request's order set, which the webhook processor uses
 * to deliver a request's events one at a time, oldest first.
 */
/** Where a new webhooks group starts (see the constructor); ensureGroup() in every role uses it too. */
export const WEBHOOK_GROUP_START = '$';

export class WebhookConsumer extends GroupConsumer {
  /**
   * Whether an account has a `webhook_url`, reused for `fieldCacheMs` (account-field-cache.ts): a URL set by
   * another process starts queueing jobs within it. A URL removed within it still queues a few jobs; the
   * webhook processor reads the URL from Redis before each delivery, so those are dropped, never sent.
   */
  private readonly webhookUrls: AccountFieldCache;

  constructor(
    redis: Redis,
    keys: Keys,
    group: string,
    consumer: string,
    logger: Logger,
    private readonly jobs: WebhookJobs,
    options: GroupConsumerOptions & { fieldCacheMs?: number } = {},
  ) {
    // A new webhooks group starts at "$": turning webhooks on for an existing
    // deployment must not replay the stream's history to customers.
    const { fieldCacheMs, ...groupOptions } = options;
    super(redis, keys, group, consumer, logger, { startId: WEBHOOK_GROUP_START, ...groupOptions });
    this.webhookUrls = new AccountFieldCache(redis, keys, { ttlMs: fieldCacheMs });
  }

  protected async handle({ id, fields }: StreamEntry): Promise<void> {
    const { event, request_id: requestId, account_id: accountId } = fields;
    if (!event || !WEBHOOK_EVENTS.has(event) || !requestId || !accountId) return;
    // A failed workflow step with steps left is not the request's failure: the next step starts instead.
    if (event === 'verification.failed' && fields.step !== undefined && Number(fields.step) < Number(fields.steps) - 1) return;
    const url = await this.webhookUrls.get(accountId, 'webhook_url');
    if (!url) return;
    const order = this.keys.webhookOrder(requestId);
    // Order set first, then the job: a job never runs before its place in the order exists. NX: an event already
    // done (score 1, a redelivered stream entry whose job completed) must not become pending again, or it would hold
    // the request's later events behind a job that never runs again (the re-add below is a no-op for BullMQ).
    await this.redis.multi().zadd(order, 'NX', 0, orderMember(id)).expire(order, ORDER_TTL_SECONDS).exec();
    await this.jobs.add({
      event_id: id,
      event,
      request_id: requestId,
      account_id: accountId,
      method: fields.method ?? '',
      status: fields.status ?? event.replace(/^verification\./, ''),
      timestamp: Number(fields.timestamp ?? Date.now()),
    });
    this.logger.debug({ request_id: requestId, event_id: id, event }, 'webhook queued');
  }
}
