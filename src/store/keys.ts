/**
 * Every Redis key flashverify uses, in one place, under `redis.prefix`.
 * Operators can read this file to know what lives in their Redis.
 */
export class Keys {
  constructor(readonly prefix: string) {}

  /** String with a 5 s TTL: written by each readiness probe (/readyz): Redis takes writes, not only answers PING. */
  readyProbe(): string {
    return `${this.prefix}:readyz`;
  }
  /** String: a sentinel sealed with the deployment's master key; every process checks it opens (crypto/key-check.ts). */
  keyCheck(): string {
    return `${this.prefix}:keycheck`;
  }
  /** Hash: one account (status, currency, balance in micro-units, key, sealed secret ...). */
  account(accountId: string): string {
    return `${this.prefix}:acct:${accountId}`;
  }
  /** String: API key → account id. */
  accountByKey(apiKey: string): string {
    return `${this.prefix}:acctkey:${apiKey}`;
  }
  /** Set: all account ids. */
  accounts(): string {
    return `${this.prefix}:accts`;
  }
  /** Hash: one verification request (sealed phone and code, HMAC of the code, statuses with times). */
  verification(requestId: string): string {
    return `${this.prefix}:vr:${requestId}`;
  }
  /** String with TTL: fixed one-second window counter of an API key's requests. */
  rateLimit(apiKey: string, epochSecond: number): string {
    return `${this.prefix}:rl:${apiKey}:${epochSecond}`;
  }
  /**
   * String with TTL: failed API authentications in the current window, per
   * client address (`ip:<address>`) or per API key (`key:<api key>`).
   */
  authFailures(scope: 'ip' | 'key', id: string): string {
    return `${this.prefix}:authfail:${scope}:${id}`;
  }
  /** Hash: an account's usage on one UTC day (`<method>:count`, `<method>:cost`, `verified`). */
  usage(accountId: string, day: string): string {
    return `${this.prefix}:usage:${accountId}:${day}`;
  }
  /**
   * String with TTL: a CLI recently used towards a destination. Both parts are
   * HMACs (the CLI contains the code): never a CLI or a number in clear.
   */
  cliCooldown(cliMac: string, destinationMac: string): string {
    return `${this.prefix}:cli:${cliMac}:${destinationMac}`;
  }
  /** Stream: delivery events (fields: event request_id account_id method status timestamp detail). */
  events(): string {
    return `${this.prefix}:events`;
  }
  /** Sorted set: request ids by expires_at (ms), so the sweeper can expire requests nobody polls. */
  expiries(): string {
    return `${this.prefix}:expiries`;
  }
  /**
   * Sorted set: request ids being created and not yet handed to the delivery
   * queue, by time (ms). An entry still there after `worker.requeueAfterMs`
   * means the api process died in between: the reconciler queues it.
   */
  unqueued(): string {
    return `${this.prefix}:unqueued`;
  }
  /**
   * Sorted set of one request's webhook events, members sortable stream ids
   * (webhook-queue.ts orderMember): score -1 written (filed by the script that
   * wrote the event, lua/includes/writeEvent.lua), 0 queued by a
   * webhook consumer, 0.5 held behind an earlier event (its job is woken when
   * that one is done), 1 done (delivered, dropped, given up, or no webhook for
   * it; kept so that a redelivered stream entry cannot make it pending again).
   * Created with the request and its TTL (createVerification-9): about a day
   * beyond an hour after the request expires; the record's `whq_until` says
   * until when events are filed in it.
   */
  webhookOrder(requestId: string): string {
    return `${this.prefix}:whq:${requestId}`;
  }
  /**
   * Hash: one account's webhook circuit breaker (events/webhook-breaker.ts): `failures` in a row, and while open
   * `open_until`, `cool_off_ms` and a probe's `probe_until` (ms). Expires a day after the last failure while
   * closed; deleted by a successful delivery or a new webhook URL.
   */
  webhookBreaker(accountId: string): string {
    return `${this.prefix}:whcb:${accountId}`;
  }
  /** Set: the accounts whose webhook breaker is open (the `flashverify_webhook_breaker_open` gauge). */
  webhookBreakersOpen(): string {
    return `${this.prefix}:whcbopen`;
  }
  /**
   * String with TTL: the first response to an `Idempotency-Key` of an account
   * (named by a keyed MAC of the key: any printable key is safe in a key name,
   * and a key holding a phone number does not reveal it), sealed.
   */
  idempotency(accountId: string, keyHash: string): string {
    return `${this.prefix}:idem:${accountId}:${keyHash}`;
  }
  /** String with TTL: an SMSC's (normalised) message id → the request id it delivers. */
  smsMessage(smsc: string, messageId: string): string {
    return `${this.prefix}:smsid:${smsc}:${messageId}`;
  }
  /** String with TTL: a delivery receipt (JSON) that arrived before its submit_sm_resp was recorded. */
  smsEarlyReceipt(smsc: string, messageId: string): string {
    return `${this.prefix}:smsdlr:${smsc}:${messageId}`;
  }
  /**
   * Sorted set with TTL: the requests whose submit_sm to this SMSC and number
   * was never answered (`smsc_unconfirmed`), each scored by the time (ms) it
   * stops waiting, for a receipt to match by number when exactly one waits;
   * `numberMac` is an HMAC of the number, never the number in clear. (A string
   * under `smsunc:` before; the name changed with the type.)
   */
  smsUnconfirmed(smsc: string, numberMac: string): string {
    return `${this.prefix}:smsuncs:${smsc}:${numberMac}`;
  }
  /**
   * Sorted set with TTL: the requests whose submit_sm to this number (HMAC), on any SMSC, is in flight (marked
   * `submitting`, its outcome not known yet), each scored by the time (ms) it stops counting (markSmsSubmitting-2):
   * while one is, a receipt is not matched by number to an unconfirmed submit (matchSmsReceipt-5).
   */
  smsInFlight(numberMac: string): string {
    return `${this.prefix}:smsinflight:${numberMac}`;
  }
  /**
   * Sorted set with TTL: message ids of receipts parked (unmatched) for this SMSC and number (HMAC), scored by
   * the time (ms) they are forgotten, for a submit found unconfirmed just after. (A string under `smsdlrnum:` before.)
   */
  smsParkedByNumber(smsc: string, numberMac: string): string {
    return `${this.prefix}:smsdlrnums:${smsc}:${numberMac}`;
  }
  /**
   * Sorted set with TTL: sliding window of one account's sends (fraud velocity
   * limits), kind `num` | `pfx` | `ip`; `subjectMac` is an HMAC of the number,
   * prefix or IP: never a number in clear.
   */
  velocity(accountId: string, kind: 'num' | 'pfx' | 'ip', subjectMac: string): string {
    return `${this.prefix}:vel:${accountId}:${kind}:${subjectMac}`;
  }
  /** String with TTL: the live request id of an (account, number[, method]), keyed by an HMAC of them. */
  liveVerification(mac: string): string {
    return `${this.prefix}:live:${mac}`;
  }
  /** Hash with TTL: one DID range's flash outcomes in one time bucket (attempts, sent, rejected, verified). */
  rangeBucket(rangePrefix: string, bucketStartMs: number): string {
    return `${this.prefix}:rh:${rangePrefix}:${bucketStartMs}`;
  }
  /** String with TTL: a quarantined DID range (value: the reason); the range selector skips it. */
  rangeQuarantine(rangePrefix: string): string {
    return `${this.prefix}:rq:${rangePrefix}`;
  }
  /**
   * Hash: conversion counters of one UTC day: `range:<prefix>:sent|rejected|verified`
   * and `country:<CC>:<method>:sent|verified`.
   */
  conversion(day: string): string {
    return `${this.prefix}:conv:${day}`;
  }
  /**
   * String with TTL: a SIP trunk's theoretical arrival time (ms, Redis's clock) under `sip.trunkLimits: cluster`, the
   * CPS every worker process shares (reserveRateSlots-1.lua). The trunk's name is URI-encoded in every trunk key.
   */
  trunkCps(trunk: string): string {
    return `${this.prefix}:tcps:${encodeURIComponent(trunk)}`;
  }
  /** Hash with TTL: worker id -> binds it holds to the SMSC, under `sms.smscs[].maxBinds` (SharedCount). */
  smscBinds(smsc: string): string {
    return `${this.prefix}:sbind:${encodeURIComponent(smsc)}`;
  }
  /** Sorted set with TTL: worker id -> when its hold on the SMSC's binds lapses (ms), with smscBinds. */
  smscBindLeases(smsc: string): string {
    return `${this.prefix}:sbindl:${encodeURIComponent(smsc)}`;
  }
  /** Sorted set with TTL: worker id -> when it last asked for an SMSC bind in vain (ms), with smscBinds. */
  smscBindWants(smsc: string): string {
    return `${this.prefix}:sbindw:${encodeURIComponent(smsc)}`;
  }
  /** Hash: SIP trunks an operator took out of service (name -> JSON {at, reason}); engine/trunk-admin.ts. */
  trunksDisabled(): string {
    return `${this.prefix}:trunkoff`;
  }
  /** String with TTL: an SMSC account's theoretical arrival time (ms), the `accountTps` every bind shares (reserveRateSlots-1.lua). */
  smscRate(smsc: string): string {
    return `${this.prefix}:srate:${encodeURIComponent(smsc)}`;
  }
  /** Hash with TTL: worker id -> channels of the trunk (`maxCalls`) it holds, under `sip.trunkLimits: cluster`. */
  trunkChannels(trunk: string): string {
    return `${this.prefix}:tch:${encodeURIComponent(trunk)}`;
  }
  /** Sorted set with TTL: worker id -> when its hold on the trunk's channels lapses (ms), with trunkChannels. */
  trunkChannelLeases(trunk: string): string {
    return `${this.prefix}:tchl:${encodeURIComponent(trunk)}`;
  }
  /**
   * Sorted set with TTL: worker id -> when its calls last asked for a channel of the trunk in vain (ms), with
   * trunkChannels: the workers waiting for one, for a fair share (takeSharedCount-3.lua).
   */
  trunkChannelWants(trunk: string): string {
    return `${this.prefix}:tchw:${encodeURIComponent(trunk)}`;
  }
  /** BullMQ prefix: queues live under `<prefix>:bull:<queue>:*`. */
  bullPrefix(): string {
    return `${this.prefix}:bull`;
  }
}
