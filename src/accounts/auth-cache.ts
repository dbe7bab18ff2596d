import { createHmac, randomBytes } from 'node:crypto';
import type { Account } from './account-store.js';

interface Entry {
  account: Account;
  accountId: string;
  apiKey: string;
  expires: number;
}

/** Beyond this many live entries the cache starts afresh (a flood of distinct valid keys is not worth memory). */
const MAX_ENTRIES = 10_000;

/**
 * Successful Basic-auth results, reused for a short while so that a busy API
 * key does not cost two Redis reads per request (`api.authCacheMs`, issue 7).
 * Entries are keyed by an HMAC of key and secret under a random salt drawn
 * when the process starts: the secret is never a map key, and nothing in the
 * map can be checked against a guessed secret outside this process. Only
 * successes are cached: a wrong secret always goes to Redis (and to the
 * brute-force counters).
 *
 * One cache per process, shared by every AccountStore in it: a change made
 * through any of them (status, new secret, rate limit ...) drops the account's
 * entries at once. A change made by another process (the CLI, another api
 * process) takes effect here when the entry expires, i.e. within `ttlMs`.
 */
export class AuthCache {
  private readonly entries = new Map<string, Entry>();
  /** Slots by account and account by API key, so that forgetting costs nothing per unrelated entry. */
  private readonly slotsOf = new Map<string, Set<string>>();
  private readonly accountOfKey = new Map<string, string>();
  private readonly salt = randomBytes(32);

  /** `scope` separates engines sharing a process (their Redis prefixes). */
  slot(scope: string, apiKey: string, secret: string): string {
    return createHmac('sha256', this.salt).update(`${scope}\0${apiKey}:${secret}`).digest('base64');
  }

  get(slot: string, now = Date.now()): Account | undefined {
    const e = this.entries.get(slot);
    if (!e) return undefined;
    if (e.expires <= now) {
      this.entries.delete(slot);
      this.slotsOf.get(e.accountId)?.delete(slot);
      return undefined;
    }
    return e.account;
  }

  set(slot: string, account: Account, ttlMs: number, now = Date.now()): void {
    if (ttlMs <= 0) return;
    if (this.entries.size >= MAX_ENTRIES) {
      this.entries.clear();
      this.slotsOf.clear();
      this.accountOfKey.clear();
    }
    this.entries.set(slot, { account, accountId: account.account_id, apiKey: account.api_key, expires: now + ttlMs });
    const slots = this.slotsOf.get(account.account_id) ?? new Set<string>();
    slots.add(slot);
    this.slotsOf.set(account.account_id, slots);
    this.accountOfKey.set(account.api_key, account.account_id);
  }

  forgetAccount(accountId: string): void {
    for (const slot of this.slotsOf.get(accountId) ?? []) this.entries.delete(slot);
    this.slotsOf.delete(accountId);
  }

  /** A 401 for this key: no earlier success of it is reused any more. */
  forgetKey(apiKey: string): void {
    const accountId = this.accountOfKey.get(apiKey);
    if (accountId !== undefined) this.forgetAccount(accountId);
  }
}

/** The process's cache (see AuthCache). */
export const authCache = new AuthCache();
