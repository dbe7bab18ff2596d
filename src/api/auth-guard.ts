import type { Redis } from 'ioredis';
import type { Keys } from '../store/keys.js';
import { scripts } from '../store/scripts.js';
import { ApiError } from '../verification/errors.js';
import { rateLimitHeaders, type RateLimitWindow } from './rate-limit.js';

export interface AuthGuardOptions {
  /** From this many failures in the window on, each failed attempt is answered only after `delayMs`. */
  delayAfter: number;
  delayMs: number;
  /** From this many failures from one address, every request from it gets 429 until the window ends. */
  lockAfter: number;
  windowSeconds: number;
}

/**
 * An address's failed-authentication budget, as a rate-limit window: `lockAfter` failures per window, `remaining`
 * of them left, the window ending at `reset` (Unix seconds). Answers that no API key's limit covers (401, the
 * lock-out's 429) carry it in the X-RateLimit-* headers, so every /v1 response has them (the contract's "Rate Limiting").
 */
const epochSecondsIn = (seconds: number): number => Math.floor(Date.now() / 1000) + Math.max(0, seconds);

/**
 * Brute-force brake on API authentication. Failures are counted atomically
 * (recordAuthFailure-2.lua) per client address and per API key over a window
 * that starts at the first failure:
 * - from `delayAfter` failures (by address or by key), a wrong secret is
 *   answered 401 only after `delayMs`;
 * - from `lockAfter` failures of one address, everything from that address is
 *   refused with 429 `rate_limited` and `Retry-After` (seconds left in the
 *   window) before the credentials are even looked at.
 * A key is slowed down but never locked: locking a key would let anybody lock
 * a customer out. Successful logins do not reset the counters (an attacker
 * with an account of their own could otherwise reset them at will).
 */
export class AuthGuard {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly options: AuthGuardOptions,
    private readonly sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
  ) {}

  /** From this many failures an address is locked out (admitRequest-2 checks it with the rate limit). */
  get lockAfter(): number {
    return this.options.lockAfter;
  }

  /** The lock-out's 429 for a TTL read with the count (admitRequest-2): a TTL of 0 or less counts as a whole window. */
  lockedFor(ttl: number): ApiError {
    return this.locked(ttl > 0 ? ttl : this.options.windowSeconds);
  }

  /** Throws 429 when the address is locked out; else returns its count of failures in the window. */
  async checkAddress(address: string): Promise<number> {
    const key = this.keys.authFailures('ip', address);
    // Every request pays this check: one read, and the TTL only for an address that is locked out.
    const failures = Number((await this.redis.get(key)) ?? 0);
    if (failures < this.options.lockAfter) return failures;
    throw this.lockedFor(await this.redis.ttl(key));
  }

  /** What is left of an address's failure budget with `failures` counted, for the headers of a 401 not counted. */
  budget(failures: number): RateLimitWindow {
    return { limit: this.options.lockAfter, remaining: Math.max(0, this.options.lockAfter - failures), reset: epochSecondsIn(this.options.windowSeconds) };
  }

  /**
   * Counts a failure; waits (slow-down) or throws 429 (lock-out) when the counts call for it. Returns what is
   * left of the address's failure budget, for the X-RateLimit-* headers of the 401.
   */
  async failed(address: string, apiKey: string | undefined): Promise<RateLimitWindow> {
    const ipKey = this.keys.authFailures('ip', address);
    // Only well-formed keys get a counter: garbage must not create keys at will.
    const keyKey = apiKey !== undefined && /^[0-9a-f]{32}$/.test(apiKey) ? this.keys.authFailures('key', apiKey) : ipKey;
    const [byAddress, byKey, ttl] = (await scripts.recordAuthFailure.run(this.redis, [ipKey, keyKey], [this.options.windowSeconds])) as [
      number,
      number,
      number,
    ];
    if (byAddress >= this.options.lockAfter) throw this.locked(ttl);
    if (byAddress >= this.options.delayAfter || byKey >= this.options.delayAfter) await this.sleep(this.options.delayMs);
    return { limit: this.options.lockAfter, remaining: Math.max(0, this.options.lockAfter - byAddress), reset: epochSecondsIn(ttl) };
  }

  /** The 429 of a locked-out address, `retryAfter` seconds before its window ends. */
  private locked(retryAfter: number): ApiError {
    const err = new ApiError('rate_limited', `Too many failed authentication attempts from this address; retry after ${retryAfter} seconds`);
    err.headers['Retry-After'] = retryAfter;
    Object.assign(err.headers, rateLimitHeaders({ limit: this.options.lockAfter, remaining: 0, reset: epochSecondsIn(retryAfter) }));
    return err;
  }
}
