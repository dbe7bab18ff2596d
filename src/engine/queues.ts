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

interface PendingAdd {
  requestId: string;
  jobId: string;
  resolve(): void;
  reject(err: unknown): void;
}

/** At most this many jobs in one addBulk (one pipelined write of that many addJob scripts). */
const MAX_BATCH = 500;

export class BullDeliveryQueue implements DeliveryQueue {
  private readonly queues = new Map<Method, Queue<DeliveryJobData>>();
  /** Adds asked for since the last flush, per method: they go to Redis together. */
  private readonly pending = new Map<Method, PendingAdd[]>();
  private flushScheduled = false;

  constructor(
    private readonly connection: ConnectionOptions,
    private readonly prefix: string,
    /** How long enqueue() waits for Redis before it gives up (the add may still land later: job ids make that harmless). */
    private readonly enqueueTimeoutMs = 2000,
  ) {}

  /**
   * `jobId` defaults to the request id; a resend's job is `<request_id>-r<n>` (same data).
   *
   * Adds are micro-batched: every enqueue() of one turn of the event loop (the
   * requests whose Redis answers came in the same I/O poll) is flushed on
   * setImmediate as one `addBulk`, one pipelined write instead of one write and
   * one round trip per job. A lone add waits one loop turn, no timer. If the
   * batch fails, every add in it fails (the caller's verification stays in the
   * reconciler's `unqueued` set, which enqueues it again).
   */
  async enqueue(method: Method, requestId: string, jobId: string = requestId): Promise<void> {
    // BullMQ's connection waits for Redis forever; a caller (an HTTP request) must not.
    let timer: NodeJS.Timeout | undefined;
    const add = new Promise<void>((resolve, reject) => {
      let list = this.pending.get(method);
      if (!list) this.pending.set(method, (list = []));
      list.push({ requestId, jobId, resolve, reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    });
    try {
      await Promise.race([
        add,
        new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('queue unavailable: Redis did not answer')), this.enqueueTimeoutMs))),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    for (const [method, list] of this.pending) {
      this.pending.delete(method);
      for (let i = 0; i < list.length; i += MAX_BATCH) {
        const batch = list.slice(i, i + MAX_BATCH);
        const jobs = batch.map((a) => ({ name: QUEUE_NAMES[method], data: { request_id: a.requestId }, opts: { ...JOB_OPTIONS, jobId: a.jobId } }));
        this.queue(method)
          .addBulk(jobs)
          .then(
            () => batch.forEach((a) => a.resolve()),
            (err: unknown) => batch.forEach((a) => a.reject(err)),
          );
      }
    }
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
