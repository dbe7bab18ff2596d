import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { AccountFieldCache } from '../accounts/account-field-cache.js';
import type { Keys } from '../store/keys.js';
import { GroupConsumer, type GroupConsumerOptions, type StreamEntry } from './group-consumer.js';
import { ORDER_QUEUED, WEBHOOK_EVENTS, markOrderDone, orderMember, type WebhookJobData } from './webhook-queue.js';

/** Where webhook deliveries go (a BullMQ queue in production). */
export interface WebhookJobs {
  add(data: WebhookJobData): Promise<void>;
}

/** Where a new webhooks group starts (see the constructor); ensureGroup() in every role uses it too. */
export const WEBHOOK_GROUP_START = '$';

/**
 * Turns events of the stream into webhook jobs, in its own consumer group
 * (`events.webhookGroup`), for accounts that have a `webhook_url`. Each event
 * a webhook may carry was filed in its request's order set by the script that
 * wrote it (`ORDER_WRITTEN`); this marks it queued before adding its job, or
 * done when it gets no webhook (no URL, a workflow step's failure with steps
 * left), so that it never holds back the request's later events.
 */
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
    // Not a webhook's event (step_started, step_timeout): never filed in an order set either.
    if (!event || !WEBHOOK_EVENTS.has(event) || !requestId || !accountId) return;
    const order = this.keys.webhookOrder(requestId);
    const member = orderMember(id);
    // A failed workflow step with steps left is not the request's failure: the next step starts instead.
    if (event === 'verification.failed' && fields.step !== undefined && Number(fields.step) < Number(fields.steps) - 1) return this.skip(order, member);
    const url = await this.webhookUrls.get(accountId, 'webhook_url');
    if (!url) return this.skip(order, member);
    // Queued before the job is added: a later event's job then waits for this one without a bound (it may be in
    // retry for hours). GT: a done event (a redelivered stream entry whose job completed) stays done, or it would
    // hold the request's later events behind a job that never runs again (the re-add below is a no-op for BullMQ).
    // XX: the set is created, with its TTL, only by the script that writes the request's first event.
    await this.redis.zadd(order, 'XX', 'GT', ORDER_QUEUED, member);
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

  /** An event that gets no webhook is done at once: the account may set a URL before the request's next event. */
  private skip(order: string, member: string): Promise<void> {
    return markOrderDone(this.redis, order, member);
  }
}
