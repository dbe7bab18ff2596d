import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Keys } from '../store/keys.js';
import { PeriodicPass } from './periodic-pass.js';
import type { Method } from './types.js';
import type { DeliveryQueue } from './verification-service.js';
import { readSteps, type StepTimer } from './workflow.js';

/** The delivery queue as the reconciler uses it: it must know whether a job was added before it adds it. */
export interface RequeueQueue extends DeliveryQueue {
  has(method: Method, jobId: string): Promise<boolean>;
}

/**
 * FraudControls as the reconciler uses it: where a send it queued is counted (trackSent: the Prometheus counter),
 * and what a test number gets instead of a job (its simulated delivery).
 */
export interface ReconcilerFraud {
  trackSent(country: string, method: Method): void;
  deliverTestNumber(base: { request_id: string; account_id: string; method: Method }): Promise<void>;
}

export interface EnqueueReconcilerOptions {
  /** An intent older than this whose request is still `sent` and undialled is queued again. */
  requeueAfterMs: number;
  /** Time between passes. */
  intervalMs: number;
  /** Intents looked at per pass. */
  batch?: number;
}

/**
 * Finds verifications that were created (and paid for) but never handed to
 * the delivery queue because the api process died between the create script
 * and `queue.add`, and queues them. The service files an intent in
 * `<prefix>:unqueued` before creating and removes it once queued; an intent
 * older than `requeueAfterMs` is such an orphan when its record is still
 * `sent` and not dialled. Queueing is idempotent (job id = request id), so any
 * number of worker processes may reconcile at once.
 *
 * A workflow request (its steps are written with the record, atomically) is
 * only queued while at step 0: later steps are the workflow advancer's, under
 * their own job ids. At step 0 its step timer (`<request_id>-t0`, idempotent)
 * is added whether or not the step was dialled: the api may have died after
 * queueing the job but before the timer, and without it the workflow would
 * never move on from a step that rang but was not verified.
 *
 * Queueing here counts nothing in the conversion `sent` in Redis: the create
 * script counted the send already, with its charge (countSent.lua), so a
 * request is counted once whether its job was added by the api, by this
 * reconciler, or by both (an api that added it and died before clearing its
 * intent; a job still waiting in a backlog is not dialled yet).
 *
 * The Prometheus counter (`flashverify_conversion_sent_total`, per process)
 * counts a send in the process that queued it: the api counts what it queued,
 * and this reconciler what it queued and nobody had. BullMQ's add of an
 * existing job id answers like a new add, so the job is looked for first: one
 * that is there was added by the api (which counted it once its add
 * returned) or by another reconciler. Two reconcilers that both found none
 * both add it (one job); the record's `requeued_at` (HSETNX, after the add)
 * lets one of them count it. Counted nowhere: a request whose adder died
 * between its add and its count (that process's counter is gone anyway), and
 * one whose api add timed out but landed while the api could not fail it
 * either (its refund's Redis call failed too). Counted twice: one whose job
 * already ran and was removed (removeOnComplete) while the record still reads
 * `sent` (the job found it expired; its `failed` not applied yet) and its
 * intent was left behind.
 */
export class EnqueueReconciler {
  private readonly loop: PeriodicPass;

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly queue: RequeueQueue,
    private readonly options: EnqueueReconcilerOptions,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
    /** Step timeouts of workflows; without it a workflow found here only gets its job. */
    private readonly stepTimer?: StepTimer,
    /** Counts the sends queued here and delivers test numbers; without it neither is done. */
    private readonly sends?: ReconcilerFraud,
  ) {
    this.loop = new PeriodicPass(() => this.reconcile(), options.intervalMs, logger, 'enqueue reconciliation failed; retrying');
  }

  start(): void {
    this.loop.start();
  }

  async stop(): Promise<void> {
    await this.loop.stop();
  }

  /** One pass; returns the request ids it queued. */
  async reconcile(): Promise<string[]> {
    const due = await this.redis.zrangebyscore(this.keys.unqueued(), '-inf', this.now() - this.options.requeueAfterMs, 'LIMIT', 0, this.options.batch ?? 200);
    const queued: string[] = [];
    for (const requestId of due) {
      const key = this.keys.verification(requestId);
      const [status, method, dialStarted, wf, wfStep, createdAt, country, testNumber, accountId] = await this.redis.hmget(
        key,
        'status',
        'method',
        'dial_started',
        'wf',
        'wf_step',
        'created_at',
        'country',
        'test_number',
        'account_id',
      );
      const atStep0 = !wf || wfStep === '0';
      const t0 = wf && wfStep === '0' ? readSteps({ wf })?.[0]?.timeout_seconds : undefined;
      if (t0 !== undefined && this.stepTimer && (status === 'sent' || status === 'delivered')) {
        // Due when it would have been, had the api lived: created_at + timeout.
        await this.stepTimer.schedule(requestId, 0, (Number(createdAt) || this.now()) + t0 * 1000 - this.now());
      }
      if (status === 'sent' && method && testNumber) {
        // A test number is never dialled: its api died before publishing its simulated delivery. Published here
        // instead (twice, harmlessly, if that api was only slow: the status is `delivered` either way).
        if (this.sends && accountId) {
          await this.sends.deliverTestNumber({ request_id: requestId, account_id: accountId, method: method as Method });
          this.logger.warn({ request_id: requestId, method, test_number: true }, 'test-number verification left undelivered (api process died?); delivered now');
        }
      } else if (status === 'sent' && method && !dialStarted && atStep0) {
        const addedBefore = await this.queue.has(method as Method, requestId);
        await this.queue.enqueue(method as Method, requestId);
        queued.push(requestId);
        if (!addedBefore && this.sends && country && (await this.redis.hsetnx(key, 'requeued_at', this.now())) === 1) {
          this.sends.trackSent(country, method as Method);
        }
        if (addedBefore) this.logger.info({ request_id: requestId, method }, 'verification queued by its api, which left its intent behind (died?); intent cleared');
        else this.logger.warn({ request_id: requestId, method }, 'verification was never queued (api process died?); queued now');
      }
      // Gone (the create script never ran or refused), already past `sent`, dialled, or queued just now.
      await this.redis.zrem(this.keys.unqueued(), requestId);
    }
    return queued;
  }
}
