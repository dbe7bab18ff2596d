import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { AccountFieldCache } from '../accounts/account-field-cache.js';
import type { Keys } from '../store/keys.js';
import { GroupConsumer, type GroupConsumerOptions, type StreamEntry, type Unsettled } from './group-consumer.js';
import { ORDER_QUEUED, WEBHOOK_EVENTS, markOrderDone, orderMember, type HeldJobs, type WebhookJobData } from './webhook-queue.js';

/** Where webhook deliveries go (a BullMQ queue in production), and what wakes the ones held for an earlier event. */
export interface WebhookJobs extends HeldJobs {
  /** `afterFailedTry`: a direct send's first try, begun then, failed; the job makes the other attempts (webhook-queue.ts). */
  add(data: WebhookJobData, afterFailedTry?: { triedAt: number }): Promise<void>;
}

/** Sends a webhook at once, without a job, when it can (WebhookProcessor.sendNow). */
export interface DirectSender {
  sendNow(data: WebhookJobData): Promise<'done' | 'queue' | 'retry'>;
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
 *
 * With a `direct` sender (`webhooks.direct`, the default: the process that reads the events also sends webhooks),
 * an event is first sent at once, with no job; only one that cannot go at once (held back by an earlier event, an
 * open breaker, a full cap) or whose first try failed gets a job. Its stream entry is acknowledged only when that
 * is settled, and the loop reads on meanwhile: a process that dies mid-send leaves the entry pending, and another
 * consumer reclaims it (events.claimIdleMs) and sends it, or finds it done. Until then the event is still WRITTEN
 * in the order set, so the request's later events wait for it (webhooks.orderMaxWaitMs).
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
    private readonly direct?: DirectSender,
  ) {
    // A new webhooks group starts at "$": turning webhooks on for an existing
    // deployment must not replay the stream's history to customers.
    const { fieldCacheMs, ...groupOptions } = options;
    super(redis, keys, group, consumer, logger, { startId: WEBHOOK_GROUP_START, ...groupOptions });
    this.webhookUrls = new AccountFieldCache(redis, keys, { ttlMs: fieldCacheMs });
  }

  protected async handle({ id, fields }: StreamEntry): Promise<void | Unsettled> {
    const { event, request_id: requestId, account_id: accountId } = fields;
    // Not a webhook's event (step_started, step_timeout): never filed in an order set either.
    if (!event || !WEBHOOK_EVENTS.has(event) || !requestId || !accountId) return;
    const order = this.keys.webhookOrder(requestId);
    const member = orderMember(id);
    // A failed workflow step with steps left is not the request's failure: the next step starts instead.
    if (event === 'verification.failed' && fields.step !== undefined && Number(fields.step) < Number(fields.steps) - 1) return this.skip(fields, order, member, true);
    const url = await this.webhookUrls.get(accountId, 'webhook_url');
    // No URL: the request has no order set (or nothing of it goes out any more), so no job is held for this event.
    if (!url) return this.skip(fields, order, member, false);
    const data: WebhookJobData = {
      event_id: id,
      event,
      request_id: requestId,
      account_id: accountId,
      method: fields.method ?? '',
      status: fields.status ?? event.replace(/^verification\./, ''),
      timestamp: Number(fields.timestamp ?? Date.now()),
    };
    if (!this.direct) return this.queue(this.redis, order, member, data);
    // Settled after handle returned, while the loop may be blocked in its next read: on the shared connection.
    const triedAt = Date.now();
    const settled = this.direct.sendNow(data).then((r) => (r === 'done' ? undefined : this.queue(this.sharedRedis, order, member, data, r === 'retry' ? { triedAt } : undefined)));
    return { settled };
  }

  private async queue(redis: Redis, order: string, member: string, data: WebhookJobData, afterFailedTry?: { triedAt: number }): Promise<void> {
    // Queued before the job is added: a later event's job then waits for this one without a bound (it may be in
    // retry for hours). GT: a done event (a redelivered stream entry whose job completed) stays done, or it would
    // hold the request's later events behind a job that never runs again (the re-add below is a no-op for BullMQ).
    // XX: the set is created, with its TTL, only by the script that writes the request's first event.
    await redis.zadd(order, 'XX', 'GT', ORDER_QUEUED, member);
    await this.jobs.add(data, afterFailedTry);
    this.logger.debug({ request_id: data.request_id, event_id: data.event_id, event: data.event, retry: !!afterFailedTry }, 'webhook queued');
  }

  /**
   * An event that gets no webhook is done at once: the account may set a URL before the request's next event.
   * `wakeHeld`: a later event's job held for it runs at once, as after a delivery.
   */
  private async skip(fields: StreamEntry['fields'], order: string, member: string, wakeHeld: boolean): Promise<void> {
    // `nowq`: the request has no order set (its account had no webhook URL when it was created; writeEvent.lua):
    // nothing to mark done in, and nothing can be held behind the event.
    if (fields.nowq === '1') return;
    await markOrderDone(this.redis, order, member, wakeHeld ? { jobs: this.jobs, logger: this.logger } : undefined);
  }
}
