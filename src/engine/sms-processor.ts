import { DelayedError, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import type { Sealer } from '../crypto/sealer.js';
import type { DeliveryEvent, EventPublisher } from '../events/event-publisher.js';
import type { Metrics } from '../metrics/metrics.js';
import { receiptOutcome } from '../sms/receipt.js';
import { renderSms, SmsTextError } from '../sms/text.js';
import type { AnsweredOutcome, DeliveryReceipt, LateRequest, SmsGateway, SmsSender, SubmitOutcome } from '../sms/types.js';
import type { Keys } from '../store/keys.js';
import { scripts } from '../store/scripts.js';
import { claimDelivery } from './delivery-claim.js';
import type { DeliveryJobData } from './queues.js';
import { utcDay } from '../verification/types.js';
import { countryLanguage } from '../media/prompts.js';
import { untilTaken } from '../store/redis.js';

/** failure_reason of a final negative receipt. */
const RECEIPT_REASON: Partial<Record<DeliveryReceipt['state'], string>> = {
  UNDELIV: 'sms_undeliverable',
  REJECTD: 'sms_rejected',
  EXPIRED: 'sms_expired',
  DELETED: 'sms_deleted',
  UNKNOWN: 'sms_unknown',
};

/**
 * Record field `sms_state`: where the delivery of one SMS verification stands.
 * `unconfirmed`: submit_sm left without a submit_sm_resp; never sent again,
 * resolved by a late response or receipt, else failed at `sms_unconfirmed_until`.
 * `refused`: an unconfirmed submit's late submit_sm_resp refused it (`sms_refusal`): nothing was sent; its job
 * settles it as an in-time refusal (retry or failed).
 */
export type SmsState = 'submitting' | 'retry' | 'unconfirmed' | 'refused' | 'accepted';

const RECORD_FIELDS = [
  'expires_at', 'locale', 'sms_state', 'sms_attempts', 'sms_smsc', 'sms_message_id', 'sms_unconfirmed_until', 'sms_nobind_since', 'sms_waits', 'sms_refusal',
  'sends', 'last_send_at',
];

export interface SmsProcessorDeps {
  /** The delivery writes' connection: it waits for Redis (maxRetriesPerRequest: null), through a refusal too (untilTaken). */
  redis: Redis;
  /**
   * A connection that fails at once while Redis is unavailable, for a receipt's first write (matched or parked): it
   * is refused then, so the SMSC sends it again, instead of waiting with its deliver_sm unanswered. Default: `redis`.
   */
  receiptRedis?: Redis;
  keys: Keys;
  sealer: Sealer;
  config: Readonly<Config>;
  gateway: SmsGateway;
  events: EventPublisher;
  metrics: Metrics;
  logger: Logger;
  /** An account's own template for a locale (null: none), read at send time. */
  accountTemplate(accountId: string, locale: string): Promise<string | null>;
  /**
   * Runs a delayed SMS delivery job now (false: it is not delayed), so a submit refused after its response
   * timeout is settled at once, not at its unconfirmed deadline. Without it, it is settled at the deadline.
   */
  wakeJob?(jobId: string): Promise<boolean>;
}

type Claim = NonNullable<Awaited<ReturnType<typeof claimDelivery>>>;
type Accepted = Extract<SubmitOutcome, { kind: 'accepted' }>;
/** A submit the SMSC did not take: for now (retry) or for good (failed). */
type Unsent = Extract<SubmitOutcome, { kind: 'retry' | 'failed' }>;

/**
 * How long a final receipt whose message id names an already settled verification stays parked under that id: long
 * enough for the submit_sm_resp of a new message given the same id (an SMSC restarted) to be mapped, short enough
 * that a receipt merely sent again is not taken for a message that gets the id much later.
 */
const REUSED_ID_PARK_S = 60;

/** A submit that waited this long for its window slot and tokens reads its request again before it leaves (beforeSend). */
const RECHECK_AFTER_MS = 200;

/**
 * Delivers one SMS-OTP verification: renders the text, submits it through the
 * SMPP gateway, and maps what follows to events. A submit the SMSC refused for
 * now (throttled, queue full) or that found no bind up waits in BullMQ's
 * delayed set, so a restart loses nothing. A submit that may have left
 * (worker died between submit_sm and its response, response timeout,
 * connection lost with it in flight) is never sent again. Delivery receipts
 * arrive through `handleReceipt`, matched by message id even when they
 * overtake the submit_sm_resp, or by number for an unconfirmed submit; a final
 * receipt is recorded and its event written in one atomic step (settleSms-4).
 */
export class SmsProcessor {
  constructor(private readonly deps: SmsProcessorDeps) {}

  async process(job: Job<DeliveryJobData>, token: string | undefined): Promise<SubmitOutcome | undefined> {
    const { redis, config, events, gateway } = this.deps;
    const requestId = job.data.request_id;
    // A previous run that reached the SMSC (or knows nothing left) is resumed; one that may have sent without knowing is not.
    const claim = await claimDelivery(
      this.deps,
      { requestId, jobId: job.id },
      'sms',
      RECORD_FIELDS,
      (extra) => (RESUMED.has(extra.sms_state ?? '') ? 'resume' : 'interrupted'),
    );
    if (!claim) return undefined;
    const { key, base, log, to, code, country, extra } = claim;
    if (extra.sms_state === 'accepted') {
      // Re-run after a crash between recording the acceptance and settling a receipt parked before it.
      await this.settleParked(claim);
      return undefined;
    }
    if (extra.sms_state === 'unconfirmed') return this.unconfirmedDeadline(job, token, claim);
    if (extra.sms_state === 'refused') return this.settleRefusal(job, token, claim, extra.sms_refusal ?? null);
    const attempt = Number(extra.sms_attempts ?? 0) + 1;

    let message;
    try {
      const template = await this.template(base.account_id, extra.locale ?? null, country);
      message = renderSms(template.text, code);
      log.debug({ language: template.language, encoding: message.encoding }, 'sms text rendered');
    } catch (err) {
      if (!(err instanceof SmsTextError)) throw err;
      log.error({ err: err.message }, 'sms text cannot be sent as one part; verification failed');
      await events.publish({ ...base, status: 'failed', detail: { reason: 'sms_text_invalid', refund: true } });
      return undefined;
    }

    // Written before submit_sm leaves: a crash from here on is "may have been sent". Only while the attempt is still
    // wanted (markSmsSubmitting-2): expired, canceled, verified or its workflow step over since the claim, it was (or
    // will be) refunded as not sent, and it is not sent.
    const stepArg = base.step === undefined ? '' : String(base.step);
    // Noted as in flight to its number meanwhile: a receipt before its submit_sm_resp is not matched to another
    // submit by number (matchSmsReceipt-5).
    // It counts for at most an SMSC's response timeout and a margin from its mark, which is made again as the submit
    // leaves after a wait for its window slot (beforeSend): a worker that died with it in flight holds nothing long.
    const inFlight = this.inFlightKey(to);
    const inFlightS = Math.ceil(Math.max(30_000, ...config.sms.smscs.map((s) => s.responseTimeoutMs)) / 1000) + 30;
    const mark = async (): Promise<boolean> =>
      (await scripts.markSmsSubmitting.run(redis, [key, inFlight], [stepArg, Date.now(), String(attempt), requestId, inFlightS])) === 1;
    const markedAt = Date.now();
    if (!(await mark())) {
      log.info({ attempt }, 'verification ended (or its step moved on) before its SMS left; not sent');
      return undefined;
    }
    const outcome = await gateway.submit({
      // The wait for a window slot, the bind's TPS token and a shared rate can be long under a backlog: a request
      // that ended meanwhile (its expiry and cancel saw `submitting`, "may have left", and billed it) is not sent,
      // and refunded below. A short wait is not read again (one round trip per SMS saved), as a flash call's.
      beforeSend: async () => Date.now() - markedAt < RECHECK_AFTER_MS || (await mark()),
      requestId,
      to,
      from: this.sender(country),
      message,
      requestReceipt: config.sms.requestReceipts,
      ...(config.sms.validityFromExpiry && extra.expires_at ? { validForSeconds: (Number(extra.expires_at) - Date.now()) / 1000 } : {}),
      ...(base.step !== undefined ? { step: base.step } : {}),
      logger: log,
    });
    // Out of flight now unless the SMSC took it (mapSmsMessage-6) or may have (markSmsWaiting-4 moves it to the
    // unconfirmed ones): a refusal, a retry, no bind, withdrawn.
    if (outcome.kind !== 'accepted' && outcome.kind !== 'unconfirmed') await untilTaken(redis, () => redis.zrem(inFlight, requestId));
    if (outcome.kind === 'withdrawn') {
      // Past its expiry, not yet swept: marked `retry`, the sweeper's expiry refunds it. Ended (its expiry, cancel or
      // step timeout found it `submitting`, "may have left", and billed it): a refunded failure gives the charge back,
      // once, and records nothing else on a request that has ended (applyEvent-4, applyStepEvent-4).
      const state = await scripts.markSmsWithdrawn.run(redis, [key], [stepArg]);
      if (state === 'ended') await events.publish({ ...base, status: 'failed', detail: { reason: 'request_ended', refund: true } });
      log.info({ attempt, smsc: outcome.smsc, refund: state === 'ended' ? 'now' : 'by_expiry' }, 'verification ended (or its step moved on) while its SMS waited for its turn; not sent, refunded');
      return undefined;
    }
    this.deps.metrics.smsSubmitted(outcome.smsc || 'none', outcome.kind === 'retry' || outcome.kind === 'unconfirmed' ? outcome.reason : outcome.kind);

    if (outcome.kind === 'accepted') {
      log.info({ smsc: outcome.smsc, bind: outcome.bind, message_id: outcome.messageId, attempt }, 'sms accepted by the SMSC');
      const early = await this.recordAccepted(requestId, to, outcome, base.step);
      if (!config.sms.requestReceipts) {
        await events.publish({
          ...base,
          status: 'delivered',
          detail: { smsc: outcome.smsc, smpp_message_id: outcome.messageId, receipt: false },
        });
      }
      if (early) {
        log.info({ message_id: outcome.messageId }, 'delivery receipt had arrived before the submit_sm_resp');
        await this.applyReceipt(requestId, early.receipt, early.known);
      }
      return outcome;
    }

    if (outcome.kind === 'unconfirmed') {
      // Never sent again: the SMSC may have stored it. A late submit_sm_resp or a receipt (by number) resolves it.
      const until = Date.now() + config.sms.unconfirmedDeadlineMs;
      const ttl = Math.ceil(config.sms.unconfirmedDeadlineMs / 1000) + 60;
      const byNumber = this.numberKeys(outcome.smsc, to);
      const marked = await scripts.markSmsWaiting.run(redis, [key, byNumber.unconfirmed, byNumber.parked, inFlight], [
        'unconfirmed', requestId, ttl, Date.now(), stepArg, 'sms_smsc', outcome.smsc, 'sms_unconfirmed_until', until, 'sms_job', job.id ?? '',
      ]);
      if (marked === 0) {
        // Its late submit_sm_resp came first: accepted (mapSmsMessage-6), or refused (markSmsRefused-2).
        const [state, refusal] = await redis.hmget(key, 'sms_state', 'sms_refusal');
        if (state === 'refused') return this.settleRefusal(job, token, claim, refusal ?? null);
        log.info({ attempt }, 'sms accepted late by the SMSC');
        return outcome;
      }
      if (typeof marked === 'string') {
        // Its receipt came while it was in flight (and was parked): that proves the SMSC took it.
        log.info({ smsc: outcome.smsc, message_id: marked }, 'sms submit unconfirmed, but its receipt had already come; accepted');
        const parked = await this.recordAccepted(requestId, to, { kind: 'accepted', rawMessageId: marked, messageId: marked, smsc: outcome.smsc, bind: outcome.bind }, base.step);
        if (parked) await this.applyReceipt(requestId, parked.receipt, parked.known);
        return outcome;
      }
      log.warn(
        { reason: outcome.reason, smsc: outcome.smsc, bind: outcome.bind, attempt, deadline_ms: config.sms.unconfirmedDeadlineMs },
        'sms submit unconfirmed (no submit_sm_resp); not sent again, waiting for a late response or receipt',
      );
      if (token === undefined) return outcome;
      await job.moveToDelayed(until, token);
      // A late refusal recorded between the mark and the move found the job still active and could not wake it.
      if ((await redis.hget(key, 'sms_state')) === 'refused') await job.promote().catch(() => undefined);
      throw new DelayedError();
    }
    return this.settleUnsent(job, token, claim, attempt, outcome);
  }

  /**
   * A submit the SMSC did not take (answered in time, or late: settleRefusal): retried later while it may be
   * (a refusal for now within sms.retry.maxAttempts, no bind up within noBindMaxWaitMs), else failed, refunded.
   */
  private async settleUnsent(job: Job<DeliveryJobData>, token: string | undefined, claim: Claim, attempt: number, outcome: Unsent): Promise<Unsent> {
    const { config, events } = this.deps;
    const { base, log, extra } = claim;
    if (outcome.kind === 'retry' && outcome.reason === 'no_bind' && token !== undefined) {
      // No bind up: nothing left, and the attempt does not count; bounded by noBindMaxWaitMs in all.
      const since = Number(extra.sms_nobind_since ?? Date.now());
      const waits = Number(extra.sms_waits ?? 0) + 1;
      if (Date.now() - since < config.sms.noBindMaxWaitMs) {
        const delay = backoff(waits, config.sms.retry.firstDelayMs, config.sms.retry.maxDelayMs);
        const settled = await this.waitForRetry(job, token, claim, attempt, delay, outcome, [
          'sms_attempts', attempt - 1, 'sms_nobind_since', since, 'sms_waits', waits,
        ]);
        if (settled) return outcome;
      }
    } else if (outcome.kind === 'retry' && attempt < config.sms.retry.maxAttempts && token !== undefined) {
      const delay = backoff(attempt, config.sms.retry.firstDelayMs, config.sms.retry.maxDelayMs);
      if (await this.waitForRetry(job, token, claim, attempt, delay, outcome, [])) return outcome;
    }

    const detail: Record<string, string | number> =
      outcome.kind === 'retry'
        ? { reason: `smsc_${outcome.reason}`, attempts: attempt, ...(outcome.smsc ? { smsc: outcome.smsc } : {}), ...smppStatus(outcome.commandStatus) }
        : { reason: 'smsc_rejected', smsc: outcome.smsc, smpp_status: outcome.commandStatus, smpp_status_name: outcome.statusName, attempts: attempt };
    // A resend not taken, on a request whose earlier message was accepted or delivered: that message stands (the
    // code the user has still verifies); the resend is refunded, no event (settleRefusedResend-4).
    const sends = Number(extra.sends ?? 1);
    if (sends > 1 && base.step === undefined) {
      const { redis, keys } = this.deps;
      const day = utcDay(Number(extra.last_send_at ?? Date.now()));
      const kept = await scripts.settleRefusedResend.run(
        redis,
        [claim.key, keys.account(base.account_id), keys.usage(base.account_id, day), keys.conversion(day)],
        [sends, 'sms'],
      );
      if (kept === 'kept') {
        log.warn({ ...detail, send: sends }, 'sms resend not sent (refunded); the request keeps its earlier message');
        return outcome;
      }
      if (kept === 'gone') return outcome;
    }
    log.warn({ ...detail }, 'sms not sent; verification failed');
    // Never accepted by any SMSC: nothing was sent, the attempt is refunded.
    await events.publish({ ...base, status: 'failed', detail: { ...detail, refund: true } });
    return outcome;
  }

  /**
   * Marks the delivery `retry` and moves the job to BullMQ's delayed set (throws DelayedError). Returns true when there
   * is nothing to retry and nothing to fail: it was accepted late meanwhile, or its request ended (or its step moved
   * on) while the submit waited, nothing sent: then refunded here, once.
   */
  private async waitForRetry(
    job: Job<DeliveryJobData>,
    token: string,
    claim: Claim,
    attempt: number,
    delay: number,
    outcome: Extract<SubmitOutcome, { kind: 'retry' }>,
    fields: (string | number)[],
  ): Promise<true> {
    const step = claim.base.step === undefined ? '' : String(claim.base.step);
    const marked = await scripts.markSmsWaiting.run(this.deps.redis, [claim.key, claim.key, claim.key, this.inFlightKey(claim.to)], [
      'retry', claim.base.request_id, 0, Date.now(), step, ...fields,
    ]);
    if (marked === 0) {
      claim.log.info({ attempt }, 'sms accepted late by the SMSC; not retried');
      return true;
    }
    if (marked === 'ended') {
      // What ended it found the attempt `submitting` and billed it: the refunded failure gives the charge back, once.
      await this.deps.events.publish({ ...claim.base, status: 'failed', detail: { reason: 'request_ended', refund: true } });
      claim.log.info({ attempt, reason: outcome.reason }, 'verification ended (or its step moved on) while its SMS waited for a bind or was throttled; not sent, refunded');
      return true;
    }
    claim.log.warn(
      { reason: outcome.reason, smpp_status: outcome.commandStatus, smsc: outcome.smsc, attempt, retry_in_ms: delay },
      'sms not accepted for now; retrying later',
    );
    await job.moveToDelayed(Date.now() + delay, token);
    throw new DelayedError();
  }

  /**
   * The job of an unconfirmed submit came back: before its deadline (a
   * re-run after a crash) it waits again; at the deadline, with no late
   * response or receipt, the verification fails `smsc_unconfirmed`, not
   * refunded (the SMSC may have sent it). settleSms-4 makes that and a
   * receipt exclusive: never both failed and delivered.
   */
  private async unconfirmedDeadline(job: Job<DeliveryJobData>, token: string | undefined, claim: Claim): Promise<undefined> {
    const until = Number(claim.extra.sms_unconfirmed_until ?? 0);
    if (Date.now() < until && token !== undefined) {
      await job.moveToDelayed(until, token);
      throw new DelayedError();
    }
    const smsc = claim.extra.sms_smsc ?? '';
    const detail = { reason: 'smsc_unconfirmed', ...(smsc ? { smsc } : {}), attempts: Number(claim.extra.sms_attempts ?? 1) };
    const result = await this.settle(claim.base.request_id, '', 'UNCONFIRMED', claim.base.step, { ...claim.base, status: 'failed', detail }, this.deps.keys.smsEarlyReceipt(smsc, ''));
    // No longer waiting for a receipt by number: another submit to the number may now be matched alone.
    await untilTaken(this.deps.redis, () => this.deps.redis.zrem(this.numberKeys(smsc, claim.to).unconfirmed, claim.base.request_id));
    if (result === 'published') claim.log.warn(detail, 'sms submit never confirmed nor receipted by its deadline; verification failed');
    else claim.log.info({ result }, 'unconfirmed sms already resolved by a receipt');
    return undefined;
  }

  /**
   * The job of a submit refused after its response timeout (markSmsRefused-2), woken by handleLateResponse or at
   * its deadline: nothing was sent, so the refusal is settled as it would have been in time.
   */
  private async settleRefusal(job: Job<DeliveryJobData>, token: string | undefined, claim: Claim, refusal: string | null): Promise<Unsent> {
    const attempt = Number(claim.extra.sms_attempts ?? 1);
    const outcome = parseRefusal(refusal, claim.extra.sms_smsc ?? '');
    claim.log.warn({ kind: outcome.kind, reason: outcome.reason, smpp_status: outcome.commandStatus, attempt }, 'sms submit refused by the SMSC after its response timeout; nothing was sent');
    return this.settleUnsent(job, token, claim, attempt, outcome);
  }

  /** A submit_sm_resp after its response timeout, for a submit this worker took as `unconfirmed`. */
  async handleLateResponse(request: LateRequest, outcome: AnsweredOutcome): Promise<void> {
    if (outcome.kind === 'accepted') await this.handleLateAccept(request, outcome);
    else await this.handleLateRefusal(request, outcome);
  }

  /**
   * The SMSC refused, after its response timeout, a submit this worker took as `unconfirmed`: it will never be
   * delivered, and no receipt is to be matched to it by number. Recorded (markSmsRefused-2), and its job woken to
   * settle it as an in-time refusal: retried while attempts are left, else failed, refunded.
   */
  private async handleLateRefusal(request: LateRequest, outcome: Unsent): Promise<void> {
    const log = this.deps.logger.child({ request_id: request.requestId });
    const smsc = outcome.smsc ?? '';
    this.deps.metrics.smsSubmitted(smsc || 'none', 'refused_late');
    const [was, jobOrState] = (await scripts.markSmsRefused.run(
      this.deps.redis,
      [this.deps.keys.verification(request.requestId), this.numberKeys(smsc, request.to).unconfirmed],
      [request.requestId, request.step === undefined ? '' : String(request.step), JSON.stringify(outcome)],
    )) as [string, string];
    if (was === 'ignored') {
      log.info({ smsc, smpp_status: outcome.commandStatus, sms_state: jobOrState }, 'submit refused after its response timeout, but its delivery has moved on; ignored');
      return;
    }
    const jobId = jobOrState;
    log.warn({ smsc, reason: outcome.reason, smpp_status: outcome.commandStatus }, 'sms submit refused by the SMSC after its response timeout');
    if (was !== 'unconfirmed' || !jobId || !this.deps.wakeJob) return;
    // Else its job waits for the unconfirmed deadline; when it cannot be woken (active just now), it finds the refusal itself.
    const woken = await this.deps.wakeJob(jobId).catch((err: Error) => (log.warn({ err: err.message }, 'could not wake the delivery job'), false));
    if (!woken) log.info({ job_id: jobId }, 'delivery job not delayed; it settles the refusal when it runs');
  }

  /**
   * The SMSC accepted, after its response timeout, a submit this worker took
   * as `unconfirmed`: record it as accepted (the deadline then finds it done).
   */
  async handleLateAccept(request: LateRequest, outcome: Accepted): Promise<void> {
    const log = this.deps.logger.child({ request_id: request.requestId });
    const early = await this.recordAccepted(request.requestId, request.to, outcome, request.step);
    log.warn({ smsc: outcome.smsc, message_id: outcome.messageId }, 'sms accepted by the SMSC after its response timeout; never sent again');
    this.deps.metrics.smsSubmitted(outcome.smsc, 'accepted_late');
    if (early) await this.applyReceipt(request.requestId, early.receipt, early.known);
  }

  /**
   * A delivery receipt from the gateway. Resolves once it is safely recorded
   * (matched and settled with its event, or parked until its submit_sm_resp),
   * so the gateway may then answer its deliver_sm / data_sm; rejects when Redis is
   * unavailable, so the SMSC sends it again.
   */
  async handleReceipt(receipt: DeliveryReceipt): Promise<void> {
    const { redis, keys, config } = this.deps;
    this.deps.metrics.smsReceipt(receipt.smsc, receipt.state);
    const { handset, ...stored } = receipt;
    const final = receiptOutcome(receipt.state) !== 'pending';
    const byNumber = this.numberKeys(receipt.smsc, handset ?? '');
    const match = (await scripts.matchSmsReceipt.run(
      this.deps.receiptRedis ?? redis,
      [
        keys.smsMessage(receipt.smsc, receipt.messageId),
        keys.smsEarlyReceipt(receipt.smsc, receipt.messageId),
        byNumber.unconfirmed,
        byNumber.parked,
        this.inFlightKey(handset ?? ''),
      ],
      // Parked without the number: numbers are never stored in clear.
      [
        JSON.stringify({ ...stored, final }),
        config.sms.receiptTtlSeconds,
        final ? '1' : '0',
        handset ? receipt.messageId : '',
        Math.ceil(config.sms.unconfirmedDeadlineMs / 1000) + 60,
        Date.now(),
      ],
    )) as [string, 'mapped' | 'unconfirmed' | 'ambiguous' | 'in_flight'] | null;
    if (!match) {
      this.deps.logger.info({ smsc: receipt.smsc, message_id: receipt.messageId, stat: receipt.state }, 'receipt before its submit_sm_resp (or unknown id); parked');
      return;
    }
    const [value, how] = match;
    if (how === 'in_flight') {
      // An unconfirmed submit waits for the number, but another submit to it is in flight: the receipt may be that
      // one's, its submit_sm_resp on the way (some SMSCs send the receipt first). Not guessed: parked under its id.
      this.deps.logger.info(
        { smsc: receipt.smsc, message_id: receipt.messageId, stat: receipt.state, in_flight: value.split(' ') },
        'receipt while another submit to its number is in flight; not matched by number, parked under its message id',
      );
      return;
    }
    if (how === 'ambiguous') {
      // Two or more submits to this number on this SMSC wait unconfirmed: the receipt could be any one's. Not
      // guessed: each is settled by its own receipt once a late submit_sm_resp maps its id, or fails at its deadline.
      this.deps.logger.warn(
        { smsc: receipt.smsc, message_id: receipt.messageId, stat: receipt.state, request_ids: value.split(' ') },
        'receipt matches several unconfirmed submits to its number; not matched by number, parked under its message id',
      );
      return;
    }
    if (how === 'unconfirmed') {
      // The receipt proves the SMSC took the submit whose response never came: map its id, then settle it.
      this.deps.logger.info({ request_id: value, smsc: receipt.smsc, message_id: receipt.messageId, stat: receipt.state }, 'receipt matched an unconfirmed submit by number');
      await this.recordAccepted(value, handset ?? '', { kind: 'accepted', rawMessageId: receipt.messageId, messageId: receipt.messageId, smsc: receipt.smsc, bind: '' });
      await this.applyReceipt(value, stored);
      return;
    }
    const { requestId, known } = parseMapped(value);
    const result = await this.applyReceipt(requestId, stored, known);
    if (result === 'duplicate' && final) {
      // Its message id names a verification already settled. Either the SMSC sent the receipt again, or it gave the
      // id to a new message (an SMSC restarted with its id counter from the start) whose submit_sm_resp this worker
      // has not mapped yet: the receipt is parked under its id for a while, so that mapping picks it up for the new
      // message (mapSmsMessage-6); a receipt sent again is forgotten then. NX: a receipt parked already stays.
      await untilTaken(redis, () => redis.set(keys.smsEarlyReceipt(receipt.smsc, receipt.messageId), JSON.stringify({ ...stored, final }), 'EX', REUSED_ID_PARK_S, 'NX'));
    }
  }

  /**
   * mapSmsMessage-6: the id mapped, the verification marked accepted; returns the receipt parked before it, if any,
   * with the account and step the id was mapped with.
   * `step`: the workflow step of the submit (undefined: not a workflow request, or a late acceptance whose step is
   * not known): the record is only marked while that step is current, so a step that timed out during its submit
   * never lends its message or receipt to the next step.
   */
  private async recordAccepted(requestId: string, to: string, outcome: Accepted, step?: number): Promise<{ receipt: DeliveryReceipt; known?: Known } | undefined> {
    const { redis, keys, config } = this.deps;
    const byNumber = this.numberKeys(outcome.smsc, to);
    const parked = (await scripts.mapSmsMessage.run(
      redis,
      [
        keys.verification(requestId),
        keys.smsMessage(outcome.smsc, outcome.messageId),
        keys.smsEarlyReceipt(outcome.smsc, outcome.messageId),
        byNumber.unconfirmed,
        byNumber.parked,
        this.inFlightKey(to),
      ],
      [requestId, config.sms.receiptTtlSeconds, outcome.smsc, outcome.messageId, step === undefined ? '' : String(step)],
    )) as [string, string] | null;
    return parked ? { receipt: JSON.parse(parked[0]) as DeliveryReceipt, known: parseMapped(parked[1]).known } : undefined;
  }

  /** A receipt parked before the acceptance was recorded and not settled yet (crash in between). */
  private async settleParked(claim: Claim): Promise<void> {
    const { sms_smsc: smsc, sms_message_id: messageId } = claim.extra;
    const parked = smsc && messageId ? await this.deps.redis.get(this.deps.keys.smsEarlyReceipt(smsc, messageId)) : null;
    if (!parked) {
      claim.log.info('delivery already handed over; nothing left to do');
      return;
    }
    claim.log.info({ message_id: messageId }, 'settling a receipt parked before a crash');
    await this.applyReceipt(claim.base.request_id, JSON.parse(parked) as DeliveryReceipt);
  }

  /**
   * `known`: the account and workflow step the message id was mapped with (mapSmsMessage-6), so the
   * record is not read here; without it (a receipt settled by a re-run after a crash, one matched by number,
   * a map of an older version) it is.
   */
  private async applyReceipt(requestId: string, receipt: DeliveryReceipt, known?: Known): Promise<'published' | 'pending' | 'duplicate' | 'gone' | 'other_step' | 'superseded'> {
    const { redis, keys } = this.deps;
    const log = this.deps.logger.child({ request_id: requestId });
    const outcome = receiptOutcome(receipt.state);
    const detail = {
      smsc: receipt.smsc,
      smpp_message_id: receipt.messageId,
      stat: receipt.state,
      ...(receipt.reportedState !== undefined ? { reported_stat: receipt.reportedState } : {}),
      ...(receipt.error !== undefined ? { err: receipt.error } : {}),
      ...(receipt.networkErrorCode ? { network_error_type: receipt.networkErrorCode.type, network_error_code: receipt.networkErrorCode.code } : {}),
    };
    const [accountId, wfStep, wfSteps] = known
      ? [known.accountId, known.step, known.steps]
      : await redis.hmget(keys.verification(requestId), 'account_id', 'wf_step', 'wf_steps');
    const step = wfStep && wfSteps ? { step: Number(wfStep), steps: Number(wfSteps) } : {};
    const base = { request_id: requestId, account_id: accountId ?? '', method: 'sms' as const, ...step };
    const event =
      outcome === 'delivered'
        ? { ...base, status: 'delivered' as const, detail }
        : { ...base, status: 'failed' as const, detail: { ...detail, reason: RECEIPT_REASON[receipt.state] ?? 'sms_unknown' } };
    const result = await this.settle(requestId, receipt.messageId, outcome === 'pending' ? '' : receipt.state, step.step, event, keys.smsEarlyReceipt(receipt.smsc, receipt.messageId));
    const message: Record<typeof result, string> = {
      published: outcome === 'delivered' ? 'sms delivered' : 'sms not delivered',
      pending: 'intermediate receipt; status unchanged',
      duplicate: `final receipt after the outcome was settled (resent, or after the unconfirmed deadline, or its id given again by the SMSC to a new message); parked ${REUSED_ID_PARK_S} s for a new message of that id`,
      gone: 'receipt for a verification that no longer exists',
      other_step: 'receipt of an earlier workflow step; ignored',
      superseded: 'failure receipt of a message sent before a resend; the resent message decides',
    };
    log[result === 'gone' ? 'warn' : 'info'](detail, message[result]);
    return result;
  }

  /** settleSms-4: records `state` (unless '') and writes `event` in one step. */
  private async settle(
    requestId: string,
    messageId: string,
    state: string,
    step: number | undefined,
    event: DeliveryEvent,
    earlyKey: string,
  ): Promise<'published' | 'pending' | 'duplicate' | 'gone' | 'other_step' | 'superseded'> {
    const { redis, keys, events } = this.deps;
    return (await scripts.settleSms.run(
      redis,
      [keys.verification(requestId), events.stream, earlyKey, events.orderKey(requestId)],
      [messageId, state, step === undefined ? '' : String(step), ...events.streamArgs(event)],
    )) as 'published' | 'pending' | 'duplicate' | 'gone' | 'other_step' | 'superseded';
  }

  /** The submits in flight to a number, on any SMSC (markSmsSubmitting-2): an HMAC of the number, never the number. */
  private inFlightKey(number: string): string {
    return this.deps.keys.smsInFlight(this.deps.sealer.mac('sms-number', `inflight:${number.replace(/^\+/, '')}`));
  }

  /** Keys by SMSC and number (one HMAC of it, never the number): an unconfirmed submit, a receipt parked for it. */
  private numberKeys(smsc: string, number: string): { unconfirmed: string; parked: string } {
    const mac = this.deps.sealer.mac('sms-number', `${smsc}:${number.replace(/^\+/, '')}`);
    return { unconfirmed: this.deps.keys.smsUnconfirmed(smsc, mac), parked: this.deps.keys.smsParkedByNumber(smsc, mac) };
  }

  /** Account template for the locale, then the configured one, then by country (`verification.languageByCountry`), then English. */
  private async template(accountId: string, locale: string | null, country: string): Promise<{ text: string; language: string }> {
    const templates = this.deps.config.sms.templates;
    const byCountry = this.deps.config.verification.languageByCountry ? countryLanguage(country) : undefined;
    const candidates = [locale, locale?.split('-')[0], byCountry, 'en'].filter((l): l is string => !!l);
    for (const language of candidates) {
      const own = await this.deps.accountTemplate(accountId, language);
      if (own) return { text: own, language };
      const configured = templates[language];
      if (configured) return { text: configured, language };
    }
    const [language, text] = Object.entries(templates)[0] ?? ['en', 'Your FlashVerify code is: {code}'];
    return { text, language };
  }

  private sender(country: string): SmsSender {
    const senders = this.deps.config.sms.senders;
    const sender = senders.byCountry[country] ?? senders.default;
    // An international number (TON 1) goes on the wire without its "+".
    return sender.ton === 1 ? { ...sender, addr: sender.addr.replace(/^\+/, '') } : sender;
  }
}

/** What a receipt's event needs of its verification, as the message id was mapped with it (mapSmsMessage-6). */
interface Known {
  accountId: string;
  /** Workflow step of the submit and the workflow's steps; '' outside a workflow. */
  step: string;
  steps: string;
}

/** A message-id map's value: "<request id> <account id> <step> <steps>"; the request id alone (an older version's map, a gone record). */
function parseMapped(value: string): { requestId: string; known?: Known } {
  const [requestId = '', accountId, step, steps] = value.split(' ');
  return { requestId, known: accountId === undefined ? undefined : { accountId, step: step ?? '', steps: steps ?? '' } };
}

/** States in which a delivery job run again picks up where the last run left (nothing can have left unknown). */
const RESUMED: ReadonlySet<string> = new Set<SmsState>(['retry', 'accepted', 'unconfirmed', 'refused']);

/** The refusal markSmsRefused-2 stored (sms_refusal); an unreadable one is taken as a refusal for good. */
function parseRefusal(stored: string | null, smsc: string): Unsent {
  try {
    const outcome = JSON.parse(stored ?? '') as Unsent;
    if (outcome.kind === 'retry' || outcome.kind === 'failed') return outcome;
  } catch {
    // fall through
  }
  return { kind: 'failed', reason: 'smsc_rejected', commandStatus: -1, statusName: 'unknown', smsc };
}

/** Doubling delay with ±20 % jitter, from `first` up to `max`. */
export function backoff(attempt: number, first: number, max: number): number {
  const base = Math.min(max, first * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (0.8 + Math.random() * 0.4));
}

function smppStatus(status: number | undefined): Record<string, number> {
  return status === undefined ? {} : { smpp_status: status };
}
