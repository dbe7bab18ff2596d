import { Queue, type ConnectionOptions } from 'bullmq';
import { connectionErrorLoggedElsewhere, untilTaken } from '../store/redis.js';
import type { Redis } from 'ioredis';
import type { Keys } from '../store/keys.js';
import { timeoutJobId, type StepTimer } from '../verification/workflow.js';

/** BullMQ queue of workflow step timeouts, under `<redis.prefix>:bull`. */
export const STEP_TIMEOUT_QUEUE = 'workflow';

export interface StepTimeoutJobData {
  request_id: string;
  step: number;
}

/**
 * Step timeouts as delayed BullMQ jobs (id `<request_id>-t<n>`): they survive
 * restarts, and adding one twice is harmless. When due, a job only writes a
 * `verification.step_timeout` event (see `fireStepTimeout`); the workflow
 * advancer, reading the stream, starts the next step.
 */
export class BullStepTimer implements StepTimer {
  readonly queue: Queue<StepTimeoutJobData>;

  constructor(connection: ConnectionOptions, prefix: string) {
    this.queue = new Queue<StepTimeoutJobData>(STEP_TIMEOUT_QUEUE, { connection, prefix });
    this.queue.on('error', connectionErrorLoggedElsewhere);
  }

  async schedule(requestId: string, step: number, delayMs: number): Promise<void> {
    await this.queue.add(
      'step_timeout',
      { request_id: requestId, step },
      { jobId: timeoutJobId(requestId, step), delay: Math.max(0, delayMs), attempts: 3, backoff: { type: 'fixed', delay: 1000 }, removeOnComplete: { age: 3600 }, removeOnFail: { age: 24 * 3600 } },
    );
  }

  async close(): Promise<void> {
    await this.queue.close();
  }
}

/**
 * A due step timeout: when step `step` is still the current one and the
 * request is still live (not verified, failed, expired or canceled), writes
 * `verification.step_timeout` to the events stream; else does nothing. Writing
 * it twice (a job retried) is harmless: the advancer's compare-and-set on the
 * step index starts the next step once.
 */
export async function fireStepTimeout(redis: Redis, keys: Keys, maxLen: number, data: StepTimeoutJobData, now = Date.now()): Promise<boolean> {
  const [status, wfStep, wfSteps, accountId, method] = await redis.hmget(
    keys.verification(data.request_id),
    'status',
    'wf_step',
    'wf_steps',
    'account_id',
    'method',
  );
  if (!accountId || !method || Number(wfStep) !== data.step || (status !== 'sent' && status !== 'delivered')) return false;
  await untilTaken(redis, () => redis.xadd(
    keys.events(),
    'MAXLEN',
    '~',
    maxLen,
    '*',
    'event',
    'verification.step_timeout',
    'request_id',
    data.request_id,
    'account_id',
    accountId,
    'method',
    method,
    'status',
    'step_timeout',
    'timestamp',
    String(now),
    'step',
    String(data.step),
    'steps',
    wfSteps ?? '',
    'detail',
    '{}',
  ));
  return true;
}
