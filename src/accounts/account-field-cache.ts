import type { Redis } from 'ioredis';
import type { Keys } from '../store/keys.js';

/** How long an account field read is reused by default (`accounts.fieldCacheMs`). */
export const DEFAULT_FIELD_CACHE_MS = 1000;
/** Beyond this many entries the least recently used one makes room. */
export const DEFAULT_FIELD_CACHE_ENTRIES = 10_000;

interface Entry {
  value: string | null;
  expires: number;
  /** What `getParsed` made of `value` with `parse`, so that a hit is not parsed again. */
  derived?: { parse: unknown; result: unknown };
}

/**
 * The entries of every AccountFieldCache of a process, by account hash key
 * (prefix included) and field. Shared so that a write made through any
 * AccountStore or FraudControls of the process drops the entry that every
 * reader of the process uses (`forget`), whichever Redis client read it.
 */
export class AccountFieldEntries {
  readonly entries = new Map<string, Entry>();
  readonly pending = new Map<string, Promise<string | null>>();

  constructor(readonly maxEntries = DEFAULT_FIELD_CACHE_ENTRIES) {}

  /** Drops the field's entry and any read of it in flight (that read's answer is not kept). */
  forget(accountKey: string, field: string): void {
    const slot = slotOf(accountKey, field);
    this.entries.delete(slot);
    this.pending.delete(slot);
  }

  /** A live entry, moved to the young end (LRU); an expired one is dropped. */
  hit(slot: string, now: number): Entry | undefined {
    const e = this.entries.get(slot);
    if (!e) return undefined;
    this.entries.delete(slot);
    if (e.expires <= now) return undefined;
    this.entries.set(slot, e);
    return e;
  }

  keep(slot: string, e: Entry): void {
    this.entries.delete(slot);
    while (this.entries.size >= this.maxEntries) {
      const oldest = this.entries.keys().next();
      if (oldest.done) break;
      this.entries.delete(oldest.value);
    }
    this.entries.set(slot, e);
  }
}

function slotOf(accountKey: string, field: string): string {
  return `${accountKey}\0${field}`;
}

/** The process's entries (see AccountFieldEntries). */
export const accountFields = new AccountFieldEntries();

/** Called by whoever writes `field` of an account in this process: its readers here see the change at once. */
export function forgetAccountField(keys: Keys, accountId: string, field: string): void {
  accountFields.forget(keys.account(accountId), field);
}

/**
 * Read-through cache of single fields of account hashes (`HGET <prefix>:acct:<id>
 * <field>`) for values that change rarely but are read on every request or
 * event (issue 7: Redis commands per call): the fraud overrides in the api,
 * `webhook_url` in the webhook consumer, `currency` in the workflow advancer.
 *
 * - A value (a missing field too: null) is reused for `ttlMs`, counted from
 *   when its HGET was sent, so it is never older than that.
 * - Concurrent misses of one (account, field) share one HGET (single flight).
 * - A failed read is not kept: the next get asks Redis again.
 * - At most `maxEntries` entries (AccountFieldEntries), least recently used
 *   out first.
 * - A write made in this process calls `forgetAccountField`, so this process
 *   sees it at once; other processes see it when their entry expires, i.e.
 *   within `ttlMs`.
 *
 * `ttlMs` 0 turns it off: every get is an HGET.
 */
export class AccountFieldCache {
  private readonly ttlMs: number;
  private readonly store: AccountFieldEntries;
  private readonly now: () => number;

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    options: { ttlMs?: number; entries?: AccountFieldEntries; now?: () => number } = {},
  ) {
    this.ttlMs = options.ttlMs ?? DEFAULT_FIELD_CACHE_MS;
    this.store = options.entries ?? accountFields;
    this.now = options.now ?? Date.now;
  }

  async get(accountId: string, field: string): Promise<string | null> {
    const key = this.keys.account(accountId);
    if (this.ttlMs <= 0) return this.redis.hget(key, field);
    const slot = slotOf(key, field);
    const hit = this.store.hit(slot, this.now());
    if (hit) return hit.value;
    const inFlight = this.store.pending.get(slot);
    if (inFlight) return inFlight;
    const sentAt = this.now();
    const read: Promise<string | null> = this.redis.hget(key, field).then(
      (value) => {
        // Forgotten meanwhile (a write in this process): the answer may predate the write, so it is not kept.
        if (this.store.pending.get(slot) === read) {
          this.store.pending.delete(slot);
          this.store.keep(slot, { value, expires: sentAt + this.ttlMs });
        }
        return value;
      },
      (err: unknown) => {
        if (this.store.pending.get(slot) === read) this.store.pending.delete(slot);
        throw err;
      },
    );
    this.store.pending.set(slot, read);
    return read;
  }

  /**
   * `parse(get(...))`, with the result kept beside the entry: a hit is not
   * parsed again. `parse` must be a pure function of the raw value, and its
   * result must not be modified by callers (it is shared).
   */
  async getParsed<T>(accountId: string, field: string, parse: (raw: string | null) => T): Promise<T> {
    const value = await this.get(accountId, field);
    const entry = this.ttlMs > 0 ? this.store.entries.get(slotOf(this.keys.account(accountId), field)) : undefined;
    if (entry && entry.value === value && entry.derived?.parse === parse) return entry.derived.result as T;
    const result = parse(value);
    if (entry && entry.value === value) entry.derived = { parse, result };
    return result;
  }

  /** Drops the local entry (see forgetAccountField). */
  invalidate(accountId: string, field: string): void {
    this.store.forget(this.keys.account(accountId), field);
  }
}
