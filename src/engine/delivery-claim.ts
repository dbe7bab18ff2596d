import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Sealer } from '../crypto/sealer.js';
import type { EventPublisher } from '../events/event-publisher.js';
import type { Keys } from '../store/keys.js';
import { scripts } from '../store/scripts.js';
import { sendOfJob } from '../verification/resend.js';
import type { Method } from '../verification/types.js';
import { stepOfJob } from '../verification/workflow.js';
import { expireRequest } from '../verification/expiry-sweeper.js';
import { dialMark } from './attempt-state.js';

/** claimDelivery-1.lua's answer. */
type ClaimVerdict = 'gone' | 'other_method' | 'other_send' | 'other_step' | 'past_sent' | 'expired' | 'expired_started' | 'claimed' | 'started';

/** The delivery job being run: its request and its BullMQ job id (which names the send it is for). */
export interface DeliveryJobRef {
  requestId: string;
  /** Undefined (not known): the job is not checked against the record's send. */
  jobId?: string | undefined;
}

/** A verification this worker may now deliver, with its sealed fields opened. */
export interface DeliveryClaim {
  key: string;
  /** The event fields every event of this attempt carries. */
  base: { request_id: string; account_id: string; method: Method; step?: number; steps?: number };
  log: Logger;
  /** Destination, E.164. */
  to: string;
  /** The code in clear: never log it, never put it in events. */
  code: string;
  country: string;
  /** Values of the extra record fields asked for. */
  extra: Record<string, string | null>;
}

export interface ClaimDeps {
  redis: Redis;
  keys: Keys;
  sealer: Sealer;
  events: EventPublisher;
  logger: Logger;
}

/**
 * The common first step of every delivery job: load the record, drop jobs that
 * no longer apply (gone, other method, another send or workflow step, past `sent`), expire
 * the request of one whose time is up (as the sweeper does: expireVerification-7 refunds the
 * attempt when nothing of it can have left), and record the dial before anything leaves, so
 * that a job re-run after a worker crash never calls or texts the destination
 * twice for one attempt. Returns undefined when the job has nothing (more) to do.
 */
export async function claimDelivery(
  deps: ClaimDeps,
  job: DeliveryJobRef,
  method: Method,
  extraFields: readonly string[] = [],
  /**
   * Asked when a previous run already started this delivery: 'resume' when it
   * is known that nothing left (an SMS the SMSC refused for now and that waits
   * for its retry), 'done' when it was handed over, 'interrupted' (the default)
   * when it may have left and must not be sent again, 'unsent' when it is known
   * that it never left (a call claimed whose run died waiting for a trunk
   * channel or CPS token, before its dial mark: failed `interrupted`, refunded).
   */
  resume?: (extra: Record<string, string | null>) => 'resume' | 'done' | 'interrupted' | 'unsent',
): Promise<DeliveryClaim | undefined> {
  const { redis, keys, sealer, events } = deps;
  const requestId = job.requestId;
  const key = keys.verification(requestId);
  const send = sendOfJob(requestId, job.jobId);
  const step = stepOfJob(requestId, job.jobId);
  // One round trip (claimDelivery-1.lua): the checks below and the dial mark (HSETNX dial_started) are made there.
  const [verdict, values] = (await scripts.claimDelivery.run(redis, [key], [
    method,
    Date.now(),
    send ?? '',
    step ?? '',
    'status',
    'account_id',
    'phone_enc',
    'code_enc',
    'country',
    'expires_at',
    'method',
    'wf_step',
    'wf_steps',
    'sends',
    ...extraFields,
  ])) as [ClaimVerdict, (string | null)[]];
  const [status, accountId, , , country, , storedMethod, wfStep, wfSteps, sends, ...extraValues] = values;
  const [phoneEnc, codeEnc] = [values[2] ?? '', values[3] ?? ''];
  const log = deps.logger.child({ request_id: requestId });
  if (verdict === 'gone' || !accountId) {
    log.warn({ method }, 'delivery job for a verification that no longer exists; dropped');
    return undefined;
  }
  if (verdict === 'other_method') {
    log.error({ method, stored_method: storedMethod }, 'delivery job for a verification of another method; dropped');
    return undefined;
  }
  if (verdict === 'other_send') {
    // Its resend was taken back (its add timed out but landed: undoResend-4) or replaced by a later one: the record
    // holds another send, which this job must neither dial again nor fail nor refund.
    log.info(
      { job_id: job.jobId, job_send: send, current_send: Number(sends ?? 1), method },
      'delivery job of a send the verification is no longer at (resend taken back or replaced); dropped',
    );
    return undefined;
  }
  if (verdict === 'other_step') {
    // A workflow step's job run again after the workflow moved on (it stalled, or was added by hand): the record is
    // at another step, whose own job delivers it.
    log.info({ job_id: job.jobId, job_step: step, current_step: Number(wfStep ?? 0), method }, 'delivery job of a workflow step the verification is no longer at; dropped');
    return undefined;
  }
  // A resend (POST /v1/verify with resend: true) re-opens the claim of a live request, maybe already delivered,
  // by clearing dial_started (resendVerification-5.lua): that one job delivers again.
  if (verdict === 'past_sent') {
    log.info({ status }, 'verification already past sent; not delivering again');
    return undefined;
  }
  // A workflow step's events carry the step (workflow.ts): its failure must not end the request while steps are left.
  const base = { request_id: requestId, account_id: accountId, method, ...(wfStep && wfSteps ? { step: Number(wfStep), steps: Number(wfSteps) } : {}) };
  const extra: Record<string, string | null> = {};
  extraFields.forEach((f, i) => (extra[f] = extraValues[i] ?? null));
  if (verdict === 'expired' || verdict === 'expired_started') {
    // Its time ran out before it went (a backlog, workers stopped), or after an earlier run started it: it expires,
    // as the sweeper would have made it, whichever of the two comes first: `expired`, the attempt refunded when
    // nothing of it can have left (refundUnsent.lua: never claimed, or an SMS not submitted, refused or retrying),
    // billed when it may have (a call dialled, an SMS whose submit_sm went out).
    const r = await expireRequest(redis, keys, requestId, Date.now(), events.maxLen);
    log.info(
      { method, verdict: r },
      verdict === 'expired' ? 'verification expired before its delivery; not delivered' : 'verification expired after its delivery started; expired, not delivered again',
    );
    return undefined;
  }
  if (verdict === 'started') {
    const again = resume?.(extra) ?? 'interrupted';
    if (again === 'done') {
      log.info({ method }, 'delivery already handed over; nothing left to do');
      return undefined;
    }
    if (again === 'interrupted') {
      log.warn('a previous worker already started this delivery (crash?); not delivering again');
      await events.publish({ ...base, status: 'failed', detail: { reason: 'interrupted' } });
      return undefined;
    }
    if (again === 'unsent') {
      // Its run died before the call could leave (waiting for a channel or a CPS token): refunded. Not dialled now:
      // a run that only stalled may still be alive, and it finds the request ended before it dials (watchUnlessEnded).
      log.warn('a previous worker claimed this delivery and ended before placing its call (crash?); failed, refunded');
      await events.publish({ ...base, status: 'failed', detail: { reason: 'interrupted', refund: true } });
      return undefined;
    }
  }
  return {
    key,
    base,
    log,
    to: sealer.open(phoneEnc, `phone:${requestId}`),
    code: sealer.open(codeEnc, `code:${requestId}`),
    country: country ?? 'ZZ',
    extra,
  };
}

/** Why a delivery job ended without its verification reaching an outcome. */
export type StrandedReason = 'job_failed' | 'job_stalled';

/** BullMQ's failedReason for a job that stalled more than `worker.maxStalledCount` times. */
const STALLED_MESSAGE = 'job stalled more than allowable limit';

export function strandedReason(err: Error | undefined): StrandedReason {
  return err?.message === STALLED_MESSAGE ? 'job_stalled' : 'job_failed';
}

/**
 * A delivery job failed for good (its one attempt threw, or it stalled beyond
 * `worker.maxStalledCount`): a verification still `sent` would wait for an
 * outcome that never comes. Publishes its `failed` event (reason job_failed or
 * job_stalled; refunded when the dial was never recorded) so the status,
 * webhooks and workflows follow. Returns whether it published.
 */
export async function failStrandedDelivery(
  deps: Pick<ClaimDeps, 'redis' | 'keys' | 'events'>,
  job: DeliveryJobRef,
  method: Method,
  reason: StrandedReason,
): Promise<boolean> {
  const requestId = job.requestId;
  const [status, accountId, storedMethod, dialStarted, wfStep, wfSteps, sends, dialJob] = await deps.redis.hmget(
    deps.keys.verification(requestId),
    'status',
    'account_id',
    'method',
    'dial_started',
    'wf_step',
    'wf_steps',
    'sends',
    'dial_job',
  );
  // Past `sent` (delivered, or already ended) or gone: nothing is stranded. A job of another send than the record's
  // (claimDelivery: 'other_send') stranded nothing either: the record's send is another job's.
  if (status !== 'sent' || !accountId || storedMethod !== method) return false;
  const send = sendOfJob(requestId, job.jobId);
  if (send !== undefined && send !== Number(sends ?? 1)) return false;
  const step = stepOfJob(requestId, job.jobId);
  if (step !== undefined && step !== Number(wfStep ?? 0)) return false;
  await deps.events.publish({
    request_id: requestId,
    account_id: accountId,
    method,
    ...(wfStep && wfSteps ? { step: Number(wfStep), steps: Number(wfSteps) } : {}),
    status: 'failed',
    // Refunded when nothing can have left: never claimed, or a call whose job never wrote its dial mark.
    detail: { reason, refund: !dialStarted || (method !== 'sms' && dialJob !== dialMark(job.jobId)) },
  });
  return true;
}
