/**
 * Every Redis key flashverify uses, in one place, under `redis.prefix`.
 * Operators can read this file to know what lives in their Redis.
 */
export class Keys {
  constructor(readonly prefix: string) {}

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
   * Sorted set (all scores 0, ordered by member): webhook events of one request
   * not yet delivered, as sortable stream ids; the lowest goes first.
   */
  webhookOrder(requestId: string): string {
    return `${this.prefix}:whq:${requestId}`;
  }
  /**
   * String with TTL: the first response to an `Idempotency-Key` of an account
   * (keyed by a SHA-256 of the key, so any printable key is safe in a key name).
   */
  idempotency(accountId: string, keyHash: string): string {
    return `${this.prefix}:idem:${accountId}:${keyHash}`;
  }
  /** BullMQ prefix: queues live under `<prefix>:bull:<queue>:*`. */
  bullPrefix(): string {
    return `${this.prefix}:bull`;
  }
}
