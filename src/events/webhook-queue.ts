import { Queue, type ConnectionOptions } from 'bullmq';
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
}

export interface WebhookRetryOptions {
  attempts: number;
  backoffMs: number;
}

/**
 * A member of `Keys.webhookOrder`: the stream id padded so that lexical order
 * is stream order (ms then sequence).
 */
export function orderMember(eventId: string): string {
  const [ms = '0', seq = '0'] = eventId.split('-');
  return `${ms.padStart(15, '0')}-${seq.padStart(10, '0')}`;
}

export class WebhookQueue {
  readonly queue: Queue<WebhookJobData>;

  constructor(
    connection: ConnectionOptions,
    prefix: string,
    private readonly retry: WebhookRetryOptions,
  ) {
    this.queue = new Queue<WebhookJobData>(WEBHOOK_QUEUE, { connection, prefix });
    this.queue.on('error', connectionErrorLoggedElsewhere);
  }

  /** Adds a delivery; adding the same event twice (a reclaimed stream entry) is a no-op. */
  async add(data: WebhookJobData): Promise<void> {
    await this.queue.add(WEBHOOK_QUEUE, data, {
      jobId: data.event_id,
      attempts: this.retry.attempts,
      backoff: { type: 'exponential', delay: this.retry.backoffMs },
      // Kept an hour so a re-handled stream entry still finds it (dedup), failures a week for inspection.
      removeOnComplete: { age: 3600, count: 10_000 },
      removeOnFail: { age: 7 * 24 * 3600 },
    });
  }

  async close(): Promise<void> {
    await this.queue.close();
  }
}
