import { Job, Queue, type ConnectionOptions } from 'bullmq';
import { jobOrdinal, type Method } from '../verification/types.js';
import type { DeliveryQueue } from '../verification/verification-service.js';
import { connectionErrorLoggedElsewhere } from '../store/redis.js';
import { withDeadline } from '../async/time-limit.js';

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
    /** How long enqueue() waits for Redis before it gives up (the add may still land later: job ids make that harmless). */
    private readonly enqueueTimeoutMs = 2000,
  ) {}

  /**
   * `jobId` defaults to the request id; a resend's job is `<request_id>-r<n>` (same data): the job id names the send
   * a job delivers, and the claim drops a job of another send than the record's (claimDelivery-1.lua).
   */
  async enqueue(method: Method, requestId: string, jobId: string = requestId): Promise<void> {
    // Only a resend's: a workflow step's job (-s<n>) found finished has run, and must not run again.
    const add = (jobOrdinal(requestId, jobId, 'r') === undefined ? Promise.resolve() : this.removeFinished(method, jobId)).then(() =>
      this.queue(method).add(QUEUE_NAMES[method], { request_id: requestId }, { ...JOB_OPTIONS, jobId }),
    );
    // BullMQ's connection waits for Redis forever; a caller (an HTTP request) must not.
    await withDeadline(add, this.enqueueTimeoutMs, () => new Error('queue unavailable: Redis did not answer'));
  }

  /**
   * A resend's job id (`<request_id>-r<n>`) is used once, unless a resend was taken back (undoResend-4: `sends`
   * goes back, so the next resend gets the same id) after its add had landed: that job then ran and was dropped
   * (claimDelivery: another send), and BullMQ would take the new add for a duplicate of it, so the resend charged
   * would never go out. Such a finished job is removed first; one still waiting delivers the new resend itself (its
   * data is only the request id, and its send is the record's again).
   */
  private async removeFinished(method: Method, jobId: string): Promise<void> {
    const job = await Job.fromId(this.queue(method), jobId);
    if (job?.finishedOn) await job.remove(); // completed or failed; a waiting, delayed or active one is left
  }

  /** Whether the job is in its queue, in any state (BullMQ keeps a finished one until removeOnComplete/removeOnFail). */
  async has(method: Method, jobId: string): Promise<boolean> {
    return (await Job.fromId(this.queue(method), jobId)) !== undefined;
  }

  /** Runs a delayed job now (BullMQ promote); false when it is not in the delayed set (waiting, active, done, gone). */
  async promote(method: Method, jobId: string): Promise<boolean> {
    const job = await Job.fromId<DeliveryJobData>(this.queue(method), jobId);
    if (!job || (await job.getState()) !== 'delayed') return false;
    await job.promote();
    return true;
  }

  queue(method: Method): Queue<DeliveryJobData> {
    let q = this.queues.get(method);
    if (!q) {
      q = new Queue<DeliveryJobData>(QUEUE_NAMES[method], { connection: this.connection, prefix: this.prefix });
      q.on('error', connectionErrorLoggedElsewhere);
      this.queues.set(method, q);
    }
    return q;
  }

  async close(): Promise<void> {
    await Promise.all([...this.queues.values()].map((q) => q.close()));
  }
}
