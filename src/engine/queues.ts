import { Queue, type ConnectionOptions } from 'bullmq';
import type { Method } from '../verification/types.js';
import type { DeliveryQueue } from '../verification/verification-service.js';

/**
 * BullMQ queue names, one per delivery method. Producers in any language add a
 * job named after the method with data `{"request_id": "<uuid>"}` and jobId =
 * request_id, under the prefix `<redis.prefix>:bull` (see README, "Job contract").
 */
export const QUEUE_NAMES: Record<Method, string> = {
  flash_call: 'flash',
  voice: 'voice',
  sms: 'sms',
};

export interface DeliveryJobData {
  request_id: string;
}

/** Job options: a delivery is never retried blindly (a retry could call twice). */
export const JOB_OPTIONS = {
  attempts: 1,
  removeOnComplete: { age: 3600, count: 10_000 },
  removeOnFail: { age: 24 * 3600 },
} as const;

export class BullDeliveryQueue implements DeliveryQueue {
  private readonly queues = new Map<Method, Queue<DeliveryJobData>>();

  constructor(
    private readonly connection: ConnectionOptions,
    private readonly prefix: string,
  ) {}

  async enqueue(method: Method, requestId: string): Promise<void> {
    await this.queue(method).add(QUEUE_NAMES[method], { request_id: requestId }, { ...JOB_OPTIONS, jobId: requestId });
  }

  queue(method: Method): Queue<DeliveryJobData> {
    let q = this.queues.get(method);
    if (!q) {
      q = new Queue<DeliveryJobData>(QUEUE_NAMES[method], { connection: this.connection, prefix: this.prefix });
      this.queues.set(method, q);
    }
    return q;
  }

  async close(): Promise<void> {
    await Promise.all([...this.queues.values()].map((q) => q.close()));
  }
}
