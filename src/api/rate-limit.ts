import type { Redis } from 'ioredis';
import type { Account } from '../accounts/account-store.js';
import type { Keys } from '../store/keys.js';
import { scripts } from '../store/scripts.js';
import { ApiError } from '../verification/errors.js';

export interface RateLimitWindow {
  /** Requests allowed per second for this API key. */
  limit: number;
  remaining: number;
  /** Unix second when the window resets. */
  reset: number;
}

/** The X-RateLimit-* headers of a window (an API key's, or an address's budget of failed logins: auth-guard.ts). */
export function rateLimitHeaders(w: RateLimitWindow): Record<string, number> {
  return { 'X-RateLimit-Limit': w.limit, 'X-RateLimit-Remaining': w.remaining, 'X-RateLimit-Reset': w.reset };
}

/**
 * Counts one request of an API key in a fixed one-second window shared by
 * every api process and every in-process producer; throws `rate_limited`
 * (after `onWindow` has seen the numbers, so HTTP can still set its headers)
 * when the account's limit, or the default, is exceeded.
 */
export async function consumeRateLimit(
  redis: Redis,
  keys: Keys,
  account: Pick<Account, 'api_key' | 'rate_limit'>,
  defaultLimit: number,
  onWindow: (w: RateLimitWindow) => void = () => undefined,
): Promise<RateLimitWindow> {
  const second = Math.floor(Date.now() / 1000);
  const count = Number(await scripts.rateLimit.run(redis, [keys.rateLimit(account.api_key, second)], [RATE_WINDOW_TTL_MS]));
  return rateLimitVerdict(account, defaultLimit, second, count, onWindow);
}

/** TTL of a one-second window's counter (rateLimit-1's ARGV[1]). */
export const RATE_WINDOW_TTL_MS = 2000;

/**
 * The window of an API key's request counted as the `count`th of `second` (by rateLimit-1, or by admitRequest-2 with
 * the address check): `onWindow` sees it, then `rate_limited` (with Retry-After) is thrown when the count is over the
 * key's limit.
 */
export function rateLimitVerdict(
  account: Pick<Account, 'rate_limit'>,
  defaultLimit: number,
  second: number,
  count: number,
  onWindow: (w: RateLimitWindow) => void = () => undefined,
): RateLimitWindow {
  const limit = account.rate_limit ?? defaultLimit;
  const window = { limit, remaining: Math.max(0, limit - count), reset: second + 1 };
  onWindow(window);
  if (count > limit) {
    const err = new ApiError('rate_limited', `Too many requests: the limit is ${limit} requests per second for this API key`);
    // The window ends within the second.
    err.headers['Retry-After'] = 1;
    throw err;
  }
  return window;
}
