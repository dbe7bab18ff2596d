import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { AccountFieldCache } from '../accounts/account-field-cache.js';
import type { Currency } from '../accounts/money.js';
import type { Config } from '../config/schema.js';
import type { Sealer } from '../crypto/sealer.js';
import { CONVERSION_TTL_MS } from '../numbers/range-health.js';
import type { Keys } from '../store/keys.js';
import { scripts } from '../store/scripts.js';
import { generateCode } from '../verification/codes.js';
import { ApiError } from '../verification/errors.js';
import type { AdmittedSend, FraudControls } from '../verification/fraud-controls.js';
import { priceMicro } from '../verification/pricing.js';
import { chargeDay, utcDay, type Method } from '../verification/types.js';
import { readSteps, stepJobId, type StepTimer, type WorkflowStep } from '../verification/workflow.js';
import { GroupConsumer, type GroupConsumerOptions, type StreamEntry } from './group-consumer.js';

/** Where the delivery job of a step goes (BullMQ in production), by job id. */
export interface StepJobs {
  enqueue(method: Method, requestId: string, jobId: string): Promise<void>;
  /** Best effort: drop a step's delivery job that no worker took yet (it would find another method and do nothing anyway). */
  discard(method: Method, jobId: string): Promise<void>;
}

/** What a step start needs of the fraud controls: the velocity windows and the conversion counters. */
export type StepFraudControls = Pick<FraudControls, 'policy' | 'admitSend' | 'releaseSend' | 'trackSent'>;

const USAGE_TTL_SECONDS = 400 * 24 * 3600;
/** An account's currency is set at creation and never changed (account-store.ts): it may be reused for long. */
const CURRENCY_CACHE_MS = 10 * 60_000;

/**
 * Starts the next step of a workflow (src/verification/workflow.ts), from the
 * events stream, in its own consumer group (`events.workflowGroup`). It reacts
 * to two events of step n: `verification.failed` (a delivery event carrying
 * `step`) and `verification.step_timeout` (the step's timer). Why a crash
 * neither skips nor repeats a step:
 *  - advanceWorkflow-8.lua moves `wf_step` from n to n+1 only if it is still
 *    n: the same event handled twice, or a timeout racing a failure, starts
 *    step n+1 once;
 *  - the stream entry is acknowledged only after step n+1's delivery job
 *    (id `<request_id>-s<n+1>`) and timer (`<request_id>-t<n+1>`) were added:
 *    an advancer that dies in between leaves the entry pending, and whoever
 *    reclaims it finds `wf_step` = n+1 with nothing dialled and adds the same
 *    jobs again (same ids: BullMQ keeps one).
 * Each step is a send like any other: counted in the account's per-number and
 * per-prefix velocity windows (a step refused there fails the verification
 * with reason `rate_limited`) and in the per-country conversion counters
 * under its own method.
 */
export class WorkflowAdvancer extends GroupConsumer {
  /** Accounts' currencies (pricing of the next step), reused for CURRENCY_CACHE_MS. */
  private readonly currencies: AccountFieldCache;

  constructor(
    redis: Redis,
    keys: Keys,
    group: string,
    consumer: string,
    logger: Logger,
    private readonly deps: { sealer: Sealer; config: Readonly<Config>; jobs: StepJobs; timer: StepTimer; fraud?: StepFraudControls },
    options: GroupConsumerOptions = {},
  ) {
    super(redis, keys, group, consumer, logger, options);
    this.currencies = new AccountFieldCache(redis, keys, { ttlMs: CURRENCY_CACHE_MS });
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
    const currency = ((await this.currencies.get(h.account_id, 'currency')) ?? 'GBP') as Currency;
    const cost = priceMicro(config.pricing, nextStep.method, h.country ?? 'ZZ', currency);
    // The next step's code, generated here and kept only sealed and MACed; discarded when the CAS below loses.
    const code = generateCode(nextStep.code_length);
    const now = Date.now();
    // Only a step that may still start is counted in the velocity windows (the script below decides, and a send
    // it does not start is taken back).
    const startable = Number(h.wf_step) === from && (h.status === 'sent' || h.status === 'delivered');
    const { admitted, refused } = startable ? await this.admit(requestId, h, now) : { admitted: undefined, refused: '' };
    // A step that timed out unsent is refunded in the usage and conversion of the day it was charged (before midnight,
    // maybe); the next one is charged today.
    const ending = chargeDay(h, from);
    const [result, value] = (await scripts.advanceWorkflow
      .run(
        this.redis,
        [
          key,
          this.keys.account(h.account_id),
          this.keys.usage(h.account_id, utcDay(now)),
          this.keys.events(),
          this.keys.usage(h.account_id, ending),
          this.keys.conversion(ending),
          this.keys.webhookOrder(requestId),
          this.keys.conversion(utcDay(now)),
        ],
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
          refused,
          CONVERSION_TTL_MS,
        ],
      )
      .catch(async (err: unknown) => {
        if (admitted) await this.deps.fraud?.releaseSend(admitted);
        throw err;
      })) as [string, string | number | undefined];
    if (result !== 'ok' && admitted) await this.deps.fraud?.releaseSend(admitted);
    if (result === 'ok') {
      const step = Number(value);
      log.info({ from_step: from, step, method: nextStep.method, why }, 'workflow: next step started');
      // Counted in the conversion `sent` by the script, with the step's charge; this is the Prometheus counter.
      this.deps.fraud?.trackSent(h.country ?? 'ZZ', nextStep.method);
      if (why === 'timeout') await this.discardStep(requestId, from, steps[from]!);
      await this.queueStep(requestId, step, nextStep);
      return step;
    }
    if (result === 'moved' && Number(value) === from + 1) {
      // Advanced already, maybe by an advancer that died before queueing: queue again unless it was dialled (same ids).
      const [status, dialled] = await this.redis.hmget(key, 'status', 'dial_started');
      if ((status === 'sent' || status === 'delivered') && !dialled) {
        log.info({ from_step: from, step: from + 1, method: nextStep.method }, 'workflow: next step started earlier but not dialled; queueing it (again)');
        if (why === 'timeout') await this.discardStep(requestId, from, steps[from]!);
        await this.queueStep(requestId, from + 1, nextStep);
      }
      return from + 1;
    }
    if (result === 'insufficient_balance' || result === 'account_suspended' || result === 'rate_limited') {
      log.warn({ from_step: from, reason: result }, 'workflow: next step may not start; verification failed');
    } else {
      log.debug({ from_step: from, result, value }, 'workflow: nothing to advance');
    }
    return undefined;
  }

  /** Counts the next step in the velocity windows; `refused` is "rate_limited" when a window is full. */
  private async admit(requestId: string, h: Record<string, string>, now: number): Promise<{ admitted?: AdmittedSend; refused: string }> {
    const fraud = this.deps.fraud;
    if (!fraud || !h.account_id || !h.phone_enc) return { refused: '' };
    const policy = await fraud.policy(h.account_id);
    const e164 = this.deps.sealer.open(h.phone_enc, `phone:${requestId}`);
    try {
      return { admitted: await fraud.admitSend(h.account_id, policy, e164, undefined, now), refused: '' };
    } catch (err) {
      if (err instanceof ApiError && err.code === 'rate_limited') return { refused: 'rate_limited' };
      throw err;
    }
  }

  /** Best effort: the delivery job of a step that timed out, if no worker took it yet. */
  private async discardStep(requestId: string, step: number, s: WorkflowStep): Promise<void> {
    await this.deps.jobs.discard(s.method, stepJobId(requestId, step)).catch(() => undefined);
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
