import { DelayedError, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import type { Sealer } from '../crypto/sealer.js';
import type { EventPublisher } from '../events/event-publisher.js';
import type { Metrics } from '../metrics/metrics.js';
import { receiptOutcome } from '../sms/receipt.js';
import { renderSms, SmsTextError } from '../sms/text.js';
import type { DeliveryReceipt, SmsGateway, SmsSender, SubmitOutcome } from '../sms/types.js';
import type { Keys } from '../store/keys.js';
import { scripts } from '../store/scripts.js';
import { recordAttemptFields } from './attempt-state.js';
import { claimDelivery } from './delivery-claim.js';
import type { DeliveryJobData } from './queues.js';

/** Languages by country for SMS templates, when the request has no locale. */
const COUNTRY_LANGUAGE: Record<string, string> = {
  FR: 'fr', BE: 'fr', LU: 'fr', MC: 'fr', SN: 'fr', CI: 'fr', CM: 'fr', MA: 'fr', TN: 'fr', DZ: 'fr',
  ES: 'es', MX: 'es', AR: 'es', CO: 'es', CL: 'es', PE: 'es', VE: 'es', EC: 'es', GT: 'es', CU: 'es',
  BO: 'es', DO: 'es', HN: 'es', PY: 'es', SV: 'es', NI: 'es', CR: 'es', PA: 'es', UY: 'es',
  DE: 'de', AT: 'de', CH: 'de', LI: 'de',
};

/** failure_reason of a final negative receipt. */
const RECEIPT_REASON: Partial<Record<DeliveryReceipt['state'], string>> = {
  UNDELIV: 'sms_undeliverable',
  REJECTD: 'sms_rejected',
  EXPIRED: 'sms_expired',
  DELETED: 'sms_deleted',
  UNKNOWN: 'sms_unknown',
};

/** Record field `sms_state`: where the delivery of one SMS verification stands. */
export type SmsState = 'submitting' | 'retry' | 'accepted';

export interface SmsProcessorDeps {
  redis: Redis;
  keys: Keys;
  sealer: Sealer;
  config: Readonly<Config>;
  gateway: SmsGateway;
  events: EventPublisher;
  metrics: Metrics;
  logger: Logger;
  /** An account's own template for a locale (null: none), read at send time. */
  accountTemplate(accountId: string, locale: string): Promise<string | null>;
}

/**
 * Delivers one SMS-OTP verification: renders the text, submits it through the
 * SMPP gateway, and maps what follows to events. A submit the SMSC refused for
 * now (throttled, queue full, no bind) waits in BullMQ's delayed set, so a
 * restart loses nothing; a submit that may have left (worker died between
 * submit_sm and its response) is never sent again. Delivery receipts arrive
 * through `handleReceipt`, matched by message id even when they overtake the
 * submit_sm_resp.
 */
export class SmsProcessor {
  constructor(private readonly deps: SmsProcessorDeps) {}

  async process(job: Job<DeliveryJobData>, token: string | undefined): Promise<SubmitOutcome | undefined> {
    const { redis, config, events, gateway } = this.deps;
    const requestId = job.data.request_id;
    const claim = await claimDelivery(this.deps, requestId, 'sms', ['locale', 'sms_state', 'sms_attempts'], (extra) =>
      extra.sms_state === 'retry' ? 'resume' : extra.sms_state === 'accepted' ? 'done' : 'interrupted',
    );
    if (!claim) return undefined;
    const { key, base, log, to, code, country } = claim;
    const attempt = Number(claim.extra.sms_attempts ?? 0) + 1;

    let message;
    try {
      const template = await this.template(base.account_id, claim.extra.locale ?? null, country);
      message = renderSms(template.text, code);
      log.debug({ language: template.language, encoding: message.encoding }, 'sms text rendered');
    } catch (err) {
      if (!(err instanceof SmsTextError)) throw err;
      log.error({ err: err.message }, 'sms text cannot be sent as one part; verification failed');
      await events.publish({ ...base, status: 'failed', detail: { reason: 'sms_text_invalid', refund: true } });
      return undefined;
    }

    // Written before submit_sm leaves: a crash from here on is "may have been sent".
    // Only while this is the request's current step (a workflow step may time out meanwhile).
    await recordAttemptFields(redis, key, base.step, { sms_state: 'submitting' satisfies SmsState, sms_attempts: String(attempt) });
    const outcome = await gateway.submit({
      requestId,
      to,
      from: this.sender(country),
      message,
      requestReceipt: config.sms.requestReceipts,
      logger: log,
    });
    this.deps.metrics.smsSubmitted(outcome.kind === 'accepted' ? outcome.smsc : (outcome.smsc ?? 'none'), outcome.kind === 'retry' ? outcome.reason : outcome.kind);

    if (outcome.kind === 'accepted') {
      log.info({ smsc: outcome.smsc, bind: outcome.bind, message_id: outcome.messageId, attempt }, 'sms accepted by the SMSC');
      const early = (await scripts.mapSmsMessage.run(
        redis,
        [key, this.deps.keys.smsMessage(outcome.smsc, outcome.messageId), this.deps.keys.smsEarlyReceipt(outcome.smsc, outcome.messageId)],
        [requestId, config.sms.receiptTtlSeconds, outcome.smsc, outcome.messageId, base.step === undefined ? '' : String(base.step)],
      )) as string | null;
      if (!config.sms.requestReceipts) {
        await events.publish({
          ...base,
          status: 'delivered',
          detail: { smsc: outcome.smsc, smpp_message_id: outcome.messageId, receipt: false },
        });
      }
      if (early) {
        log.info({ message_id: outcome.messageId }, 'delivery receipt had arrived before the submit_sm_resp');
        await this.applyReceipt(requestId, JSON.parse(early) as DeliveryReceipt);
      }
      return outcome;
    }

    if (outcome.kind === 'retry' && attempt < config.sms.retry.maxAttempts && token !== undefined) {
      let delay = backoff(attempt, config.sms.retry.firstDelayMs, config.sms.retry.maxDelayMs);
      // After a timeout the SMSC may still answer: give a late submit_sm_resp at least as long again before resending.
      if (outcome.reason === 'timeout') delay = Math.max(delay, this.responseTimeoutMs(outcome.smsc));
      // Nothing left (refused for now, never had it), or it may still be accepted late. Retried from BullMQ's delayed set.
      if ((await scripts.markSmsRetry.run(redis, [key], [])) === 0) {
        log.info({ attempt }, 'sms accepted late by the SMSC; not retried');
        return outcome;
      }
      log.warn(
        { reason: outcome.reason, smpp_status: outcome.commandStatus, smsc: outcome.smsc, attempt, retry_in_ms: delay },
        'sms not accepted for now; retrying later',
      );
      await job.moveToDelayed(Date.now() + delay, token);
      throw new DelayedError();
    }

    const detail: Record<string, string | number> =
      outcome.kind === 'retry'
        ? { reason: `smsc_${outcome.reason}`, attempts: attempt, ...(outcome.smsc ? { smsc: outcome.smsc } : {}), ...smppStatus(outcome.commandStatus) }
        : { reason: 'smsc_rejected', smsc: outcome.smsc, smpp_status: outcome.commandStatus, smpp_status_name: outcome.statusName, attempts: attempt };
    log.warn({ ...detail }, 'sms not sent; verification failed');
    // Never accepted by any SMSC: nothing was sent, the attempt is refunded.
    await events.publish({ ...base, status: 'failed', detail: { ...detail, refund: true } });
    return outcome;
  }

  /**
   * The SMSC accepted, after its response timeout, a submit this worker took
   * as `timeout`: record it as accepted so the delayed retry finds it done
   * and does not send the code again.
   */
  async handleLateAccept(requestId: string, outcome: Extract<SubmitOutcome, { kind: 'accepted' }>): Promise<void> {
    const { redis, keys, config } = this.deps;
    const log = this.deps.logger.child({ request_id: requestId });
    const key = keys.verification(requestId);
    const early = (await scripts.mapSmsMessage.run(
      redis,
      [key, keys.smsMessage(outcome.smsc, outcome.messageId), keys.smsEarlyReceipt(outcome.smsc, outcome.messageId)],
      [requestId, config.sms.receiptTtlSeconds, outcome.smsc, outcome.messageId],
    )) as string | null;
    log.warn({ smsc: outcome.smsc, message_id: outcome.messageId }, 'sms accepted by the SMSC after its response timeout; its retry is cancelled');
    this.deps.metrics.smsSubmitted(outcome.smsc, 'accepted_late');
    if (early) await this.applyReceipt(requestId, JSON.parse(early) as DeliveryReceipt);
  }

  /**
   * A delivery receipt from the gateway. Resolves once it is safely recorded
   * (matched and its event written, or parked until its submit_sm_resp), so
   * the gateway may then answer deliver_sm; rejects when Redis is unavailable,
   * so the SMSC sends it again.
   */
  async handleReceipt(receipt: DeliveryReceipt): Promise<void> {
    const { redis, keys, config } = this.deps;
    this.deps.metrics.smsReceipt(receipt.smsc, receipt.state);
    const requestId = (await scripts.matchSmsReceipt.run(
      redis,
      [keys.smsMessage(receipt.smsc, receipt.messageId), keys.smsEarlyReceipt(receipt.smsc, receipt.messageId)],
      [JSON.stringify(receipt), config.sms.receiptTtlSeconds],
    )) as string | null;
    if (!requestId) {
      this.deps.logger.info({ smsc: receipt.smsc, message_id: receipt.messageId, stat: receipt.state }, 'receipt before its submit_sm_resp (or unknown id); parked');
      return;
    }
    await this.applyReceipt(requestId, receipt);
  }

  private async applyReceipt(requestId: string, receipt: DeliveryReceipt): Promise<void> {
    const { redis, keys, events } = this.deps;
    const log = this.deps.logger.child({ request_id: requestId });
    const outcome = receiptOutcome(receipt.state);
    const detail = {
      smsc: receipt.smsc,
      smpp_message_id: receipt.messageId,
      stat: receipt.state,
      ...(receipt.error !== undefined ? { err: receipt.error } : {}),
      ...(receipt.networkErrorCode ? { network_error_type: receipt.networkErrorCode.type, network_error_code: receipt.networkErrorCode.code } : {}),
    };
    if (outcome === 'pending') {
      log.info(detail, 'intermediate receipt; status unchanged');
      return;
    }
    const key = keys.verification(requestId);
    const [accountId, wfStep, wfSteps, currentId] = await redis.hmget(key, 'account_id', 'wf_step', 'wf_steps', 'sms_message_id');
    if (!accountId) {
      log.warn(detail, 'receipt for a verification that no longer exists');
      return;
    }
    // A workflow step's receipt carries its step; one for the SMS of a step that is over (timed out) changes nothing.
    if (wfStep && wfSteps && currentId !== receipt.messageId) {
      log.info(detail, 'receipt of an earlier workflow step; ignored');
      return;
    }
    // One final receipt per message: SMSCs resend receipts they think were lost.
    if ((await redis.hsetnx(key, 'sms_receipt', receipt.state)) === 0) {
      log.info(detail, 'duplicate final receipt ignored');
      return;
    }
    const step = wfStep && wfSteps ? { step: Number(wfStep), steps: Number(wfSteps) } : {};
    const base = { request_id: requestId, account_id: accountId, method: 'sms' as const, ...step };
    log.info(detail, outcome === 'delivered' ? 'sms delivered' : 'sms not delivered');
    if (outcome === 'delivered') await events.publish({ ...base, status: 'delivered', detail });
    else await events.publish({ ...base, status: 'failed', detail: { ...detail, reason: RECEIPT_REASON[receipt.state] ?? 'sms_unknown' } });
  }

  /** Account template for the locale, then the configured one, then by country, then English. */
  private async template(accountId: string, locale: string | null, country: string): Promise<{ text: string; language: string }> {
    const templates = this.deps.config.sms.templates;
    const candidates = [locale, locale?.split('-')[0], COUNTRY_LANGUAGE[country], 'en'].filter((l): l is string => !!l);
    for (const language of candidates) {
      const own = await this.deps.accountTemplate(accountId, language);
      if (own) return { text: own, language };
      const configured = templates[language];
      if (configured) return { text: configured, language };
    }
    const [language, text] = Object.entries(templates)[0] ?? ['en', 'Your FlashVerify code is: {code}'];
    return { text, language };
  }

  private responseTimeoutMs(smsc: string | undefined): number {
    const configured = this.deps.config.sms.smscs.find((s) => s.name === smsc);
    return configured?.responseTimeoutMs ?? 30_000;
  }

  private sender(country: string): SmsSender {
    const senders = this.deps.config.sms.senders;
    const sender = senders.byCountry[country] ?? senders.default;
    // An international number (TON 1) goes on the wire without its "+".
    return sender.ton === 1 ? { ...sender, addr: sender.addr.replace(/^\+/, '') } : sender;
  }
}

/** Doubling delay with ±20 % jitter, from `first` up to `max`. */
export function backoff(attempt: number, first: number, max: number): number {
  const base = Math.min(max, first * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (0.8 + Math.random() * 0.4));
}

function smppStatus(status: number | undefined): Record<string, number> {
  return status === undefined ? {} : { smpp_status: status };
}
