import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Currency } from '../accounts/money.js';
import type { Config } from '../config/schema.js';
import type { Sealer } from '../crypto/sealer.js';
import type { Keys } from '../store/keys.js';
import { scripts } from '../store/scripts.js';
import { generateCode } from '../verification/codes.js';
import { priceMicro } from '../verification/pricing.js';
import { utcDay, type Method } from '../verification/types.js';
import { readSteps, stepJobId, type StepTimer, type WorkflowStep } from '../verification/workflow.js';
import { GroupConsumer, type GroupConsumerOptions, type StreamEntry } from './group-consumer.js';

/** Where the delivery job of a step goes (BullMQ in production), by job id. */
export interface StepJobs {
  enqueue(method: Method, requestId: string, jobId: string): Promise<void>;
  /** Best effort: drop a step's delivery job that no worker took yet (it would find another method and do nothing anyway). */
  discard(method: Method, jobId: string): Promise<void>;
}

const USAGE_TTL_SECONDS = 400 * 24 * 3600;

/**
 * Starts the next step of a workflow (src/verification/workflow.ts), from the
 * events stream, in its own consumer group (`events.workflowGroup`). It reacts
 * to two events of step n: `verification.failed` (a delivery event carrying
 * `step`) and `verification.step_timeout` (the step's timer). Why a crash
 * neither skips nor repeats a step:
 *  - advanceWorkflow-4.lua moves `wf_step` from n to n+1 only if it is still
 *    n: the same event handled twice, or a timeout racing a failure, starts
 *    step n+1 once;
 *  - the stream entry is acknowledged only after step n+1's delivery job
 *    (id `<request_id>-s<n+1>`) and timer (`<request_id>-t<n+1>`) were added:
 *    an advancer that dies in between leaves the entry pending, and whoever
 *    reclaims it finds `wf_step` = n+1 with nothing dialled and adds the same
 *    jobs again (same ids: BullMQ keeps one).
 */
export class WorkflowAdvancer extends GroupConsumer {
  constructor(
    redis: Redis,
    keys: Keys,
    group: string,
    consumer: string,
    logger: Logger,
    private readonly deps: { sealer: Sealer; config: Readonly<Config>; jobs: StepJobs; timer: StepTimer },
    options: GroupConsumerOptions = {},
  ) {
    super(redis, keys, group, consumer, logger, options);
  }

  protected async handle({ fields }: StreamEntry): Promise<void> {
    const { event, request_id: requestId } = fields;
    if (!requestId || fields.step === undefined) return;
    const why = event === 'verification.failed' ? 'failed' : event === 'verification.step_timeout' ? 'timeout' : undefined;
    if (!why) return;
    const from = Number(fields.step);
    if (!Number.isInteger(from)) return;
    await this.advance(requestId, from, why);
  }

  /** Moves the request from step `from` to the next one; returns the step current afterwards, or undefined. */
  async advance(requestId: string, from: number, why: 'failed' | 'timeout'): Promise<number | undefined> {
    const { sealer, config } = this.deps;
    const key = this.keys.verification(requestId);
    const h = await this.redis.hgetall(key);
    const steps = readSteps(h);
    const log = this.logger.child({ request_id: requestId });
    if (!steps || !h.account_id) return undefined;
    const nextStep = steps[from + 1];
    if (!nextStep) return undefined;
    const currency = ((await this.redis.hget(this.keys.account(h.account_id), 'currency')) ?? 'GBP') as Currency;
    const cost = priceMicro(config.pricing, nextStep.method, h.country ?? 'ZZ', currency);
    // The next step's code, generated here and kept only sealed and MACed; discarded when the CAS below loses.
    const code = generateCode(nextStep.code_length);
    const now = Date.now();
    const [result, value] = (await scripts.advanceWorkflow.run(
      this.redis,
      [key, this.keys.account(h.account_id), this.keys.usage(h.account_id, utcDay(now)), this.keys.events()],
      [
        from,
        now,
        nextStep.method,
        cost,
        sealer.mac('code', `${requestId}:${code}`),
        sealer.seal(code, `code:${requestId}`),
        nextStep.code_length,
        why,
        config.events.maxLen,
        USAGE_TTL_SECONDS,
      ],
    )) as [string, string | number | undefined];
    if (result === 'ok') {
      const step = Number(value);
      log.info({ from_step: from, step, method: nextStep.method, why }, 'workflow: next step started');
      if (why === 'timeout') {
        const prev = steps[from]!;
        await this.deps.jobs.discard(prev.method, stepJobId(requestId, from)).catch(() => undefined);
      }
      await this.queueStep(requestId, step, nextStep);
      return step;
    }
    if (result === 'moved' && Number(value) === from + 1) {
      // Advanced already, maybe by an advancer that died before queueing: queue again unless it was dialled (same ids).
      const [status, dialled] = await this.redis.hmget(key, 'status', 'dial_started');
      if ((status === 'sent' || status === 'delivered') && !dialled) await this.queueStep(requestId, from + 1, nextStep);
      return from + 1;
    }
    if (result === 'insufficient_balance') log.warn({ from_step: from }, 'workflow: next step cannot be paid; verification failed');
    else log.debug({ from_step: from, result, value }, 'workflow: nothing to advance');
    return undefined;
  }

  /**
   * Timer first, then the delivery job: a timer without its job only writes an event nobody acts on twice.
   * Retried a few times here (same job ids); if it still fails, the entry stays pending and is reclaimed later.
   */
  private async queueStep(requestId: string, step: number, s: WorkflowStep): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        if (s.timeout_seconds !== undefined) await this.deps.timer.schedule(requestId, step, s.timeout_seconds * 1000);
        await this.deps.jobs.enqueue(s.method, requestId, stepJobId(requestId, step));
        return;
      } catch (err) {
        if (attempt >= 3) throw err;
        this.logger.warn({ request_id: requestId, step, err: (err as Error).message }, 'workflow: could not queue the step; retrying');
        await new Promise((r) => setTimeout(r, 200 * attempt));
      }
    }
  }
}
