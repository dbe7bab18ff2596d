import type { LookupAddress } from 'node:dns';
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import { WebhookSlots } from './webhook-slots.js';
import { WebhookLookupTimeoutError, type ResolveAll } from './webhook-target.js';

/** What the cache counts (metrics/metrics.ts has these). */
export interface HostCacheMetrics {
  /** A lookup was handed to the resolver. */
  webhookDnsLookup(): void;
  /** An answer given from the cache with no lookup: fresh, stale (a new lookup failed or is slow), or a failure kept. */
  webhookDnsCached(answer: 'fresh' | 'stale' | 'failure'): void;
  /** A lookup ended in failure: `not_found` (no such name, or no address), `error` (anything else). */
  webhookDnsFailed(reason: 'not_found' | 'error'): void;
  /** A delivery gave up waiting for an answer (the lookup, or a free lookup slot) at its deadline. */
  webhookDnsTimeout(): void;
}

export interface WebhookHostCacheOptions {
  /** The resolver asked (the system's dns.lookup in production; tests inject their own). */
  resolveAll: ResolveAll;
  /** An answer is used without a lookup this long after it came; 0: nothing is kept, not even failures. */
  cacheMs: number;
  /** A failed lookup is not repeated for this long: its host's deliveries get the failure (or a stale answer) at once. */
  negativeCacheMs: number;
  /** After `cacheMs`, an answer is still used this long when a new lookup fails (not "no such name") or is slow. */
  staleMs: number;
  /** How long a delivery with a stale answer at hand waits for the new lookup before it takes the stale one. */
  staleWaitMs: number;
  /** Lookups handed to the resolver at once; the others wait for one to end, in turn. */
  maxLookups: number;
  /** Hosts kept; the least recently used goes first. */
  maxHosts?: number;
  metrics?: HostCacheMetrics;
  logger?: Logger;
}

/** Hosts kept by default: far more receivers than a deployment has, for about 2 MB. */
const HOSTS_KEPT = 10_000;

/** Errors that say the name has no address (NXDOMAIN, NODATA: Node reports both as ENOTFOUND from dns.lookup). */
const NOT_FOUND = new Set(['ENOTFOUND', 'ENODATA']);

/** All lookups share one set of slots (WebhookSlots is per key). */
const SLOTS_KEY = 'lookups';

interface Answer {
  readonly addresses: readonly LookupAddress[];
  readonly freshUntil: number;
  readonly staleUntil: number;
}

interface Failure {
  readonly error: Error;
  readonly until: number;
}

interface Entry {
  readonly answer?: Answer;
  readonly failure?: Failure;
}

/** One lookup of a host, shared by every delivery that wants the host while it is pending. */
interface Lookup {
  promise: Promise<LookupAddress[]>;
  /** When it asked for a slot, and whether it got one (then it runs until the resolver answers or gives up). */
  readonly queuedAt: number;
  started: boolean;
  /** It kept a delivery with a stale answer waiting `staleWaitMs`: while it is pending, the stale answer goes at once. */
  slow: boolean;
  /** A delivery gave up on it, or took a stale answer instead: said once in the log. */
  warned: boolean;
}

/**
 * The answers of webhook hosts, per process: every address of the name, as `dns.lookup` with `all` and
 * `verbatim` gives them, so that a delivery's SSRF check (assertWebhookTarget) and its connect (guardedLookup)
 * use the same answer, and a receiver is not looked up at every delivery. It keeps answers, never a verdict:
 * every use checks the addresses again (webhooks.allowPrivate).
 *
 * - An answer is used for `cacheMs`; then the next delivery looks the host up again.
 * - Single flight: deliveries that want a host already being looked up wait for that lookup.
 * - At most `maxLookups` lookups run at once. A system lookup is getaddrinfo on libuv's thread pool (4 threads
 *   by default, shared with fs, async crypto and zlib), and one the resolver never answers holds its thread until
 *   getaddrinfo gives up (its delivery is released at its deadline, the thread is not): kept below the pool, hung
 *   lookups leave the rest of the process its threads. A lookup waits for a slot in turn; a delivery waiting for
 *   it still gives up at its deadline (WebhookLookupTimeoutError), and the lookup stays queued (one per host) so
 *   that its answer serves the retries.
 * - A failed lookup is kept `negativeCacheMs` (RFC 2308 keeps both NXDOMAIN and server failures): the host's
 *   deliveries fail at once with it instead of asking again, and are retried as any failure.
 * - Stale if error: for `staleMs` after it expired, an answer is still used when the new lookup fails with
 *   anything but "no such name" (that removes it), or has not answered within `staleWaitMs` (RFC 8767's serve-stale
 *   and client response timer), so a flapping or hung resolver does not stop the deliveries to known hosts.
 *
 * IP literals are never looked up.
 */
export class WebhookHostCache {
  /** Answers and failures by host, least recently used first (a Map keeps insertion order). */
  private readonly entries = new Map<string, Entry>();
  /** Lookups not ended yet (waiting for a slot, or running), by host. */
  private readonly pending = new Map<string, Lookup>();
  private readonly slots: WebhookSlots;
  private readonly maxHosts: number;

  constructor(private readonly options: WebhookHostCacheOptions) {
    this.slots = new WebhookSlots(options.maxLookups);
    this.maxHosts = options.maxHosts ?? HOSTS_KEPT;
  }

  /**
   * Every address of `host`: from the cache, or from a lookup (this delivery's, or one in flight). Rejects with
   * WebhookLookupTimeoutError when `signal` aborts first, with the resolver's error when the lookup failed.
   */
  readonly resolve: ResolveAll = async (host, signal) => {
    const family = isIP(host);
    if (family) return [{ address: host, family }];
    const now = Date.now();
    const entry = this.entries.get(host);
    if (entry) this.keep(host, entry); // most recently used
    const answer = entry?.answer;
    if (answer && now < answer.freshUntil) return this.cached('fresh', answer);
    const stale = answer && now < answer.staleUntil ? answer : undefined;
    const failure = entry?.failure && now < entry.failure.until ? entry.failure : undefined;
    if (failure) {
      if (stale) return this.cached('stale', stale); // a "no such name" removed the answer
      this.options.metrics?.webhookDnsCached('failure');
      throw failure.error;
    }
    const lookup = this.pending.get(host) ?? this.start(host);
    if (stale && lookup.slow) return this.cached('stale', stale);
    return this.wait(host, lookup, stale, signal);
  };

  /** Lookups running (each holding a resolver thread, for the system's) and waiting for a slot; hosts kept. */
  stats(): { running: number; waiting: number; hosts: number } {
    const { held, waiting } = this.slots.stats(SLOTS_KEY);
    return { running: held, waiting, hosts: this.entries.size };
  }

  private cached(answer: 'fresh' | 'stale', from: Answer): LookupAddress[] {
    this.options.metrics?.webhookDnsCached(answer);
    return [...from.addresses];
  }

  private start(host: string): Lookup {
    const lookup: Lookup = { promise: Promise.resolve([]), queuedAt: Date.now(), started: false, slow: false, warned: false };
    this.pending.set(host, lookup);
    lookup.promise = this.run(host, lookup);
    lookup.promise.catch(() => undefined); // each waiter handles it; a lookup nobody waits for any more too
    return lookup;
  }

  /** Waits for a slot (never gives up: single flight keeps one per host), asks the resolver, keeps what it says. */
  private async run(host: string, lookup: Lookup): Promise<LookupAddress[]> {
    const release = await this.slots.acquire(SLOTS_KEY, new AbortController().signal);
    lookup.started = true;
    this.options.metrics?.webhookDnsLookup();
    try {
      const addresses = await this.options.resolveAll(host);
      if (addresses.length === 0) throw Object.assign(new Error(`no address for ${host}`), { code: 'ENOTFOUND' });
      this.answered(host, addresses);
      return addresses;
    } catch (err) {
      this.failed(host, err as NodeJS.ErrnoException);
      throw err;
    } finally {
      release();
      this.pending.delete(host);
      if (lookup.warned) this.options.logger?.info({ host, took_ms: Date.now() - lookup.queuedAt }, 'webhook host lookup that had timed out has ended');
    }
  }

  /** Waits for `lookup` on behalf of one delivery, at most until `signal` aborts (or `staleWaitMs` with `stale`). */
  private wait(host: string, lookup: Lookup, stale: Answer | undefined, signal: AbortSignal | undefined): Promise<LookupAddress[]> {
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      let settled = false;
      const settle = (then: () => void): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        then();
      };
      const onAbort = (): void =>
        settle(() => {
          this.options.metrics?.webhookDnsTimeout();
          this.warn(host, lookup, lookup.started ? 'no answer from the resolver within the delivery deadline' : 'no free lookup slot (webhooks.maxLookups) within the delivery deadline');
          reject(new WebhookLookupTimeoutError(host));
        });
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      if (stale) {
        timer = setTimeout(
          () =>
            settle(() => {
              lookup.slow = true;
              this.warn(host, lookup, `no answer within ${this.options.staleWaitMs} ms; the expired answer is used meanwhile`);
              resolve(this.cached('stale', stale));
            }),
          this.options.staleWaitMs,
        );
      }
      lookup.promise.then(
        (addresses) => settle(() => resolve([...addresses])),
        (err: NodeJS.ErrnoException) => settle(() => (stale && !NOT_FOUND.has(err.code ?? '') ? resolve(this.cached('stale', stale)) : reject(err))),
      );
    });
  }

  private answered(host: string, addresses: LookupAddress[]): void {
    const { cacheMs, staleMs } = this.options;
    if (cacheMs === 0) return;
    const now = Date.now();
    this.keep(host, { answer: { addresses: [...addresses], freshUntil: now + cacheMs, staleUntil: now + cacheMs + staleMs } });
  }

  private failed(host: string, error: NodeJS.ErrnoException): void {
    const notFound = NOT_FOUND.has(error.code ?? '');
    this.options.metrics?.webhookDnsFailed(notFound ? 'not_found' : 'error');
    const { cacheMs, negativeCacheMs } = this.options;
    if (cacheMs === 0) return;
    // The name is gone: its old answer goes too. Any other failure leaves it for stale use.
    const answer = notFound ? undefined : this.entries.get(host)?.answer;
    const failure = negativeCacheMs > 0 ? { error, until: Date.now() + negativeCacheMs } : undefined;
    if (answer || failure) this.keep(host, { answer, failure });
    else this.entries.delete(host);
  }

  /** Stores `entry` as the most recently used, and forgets the least recently used beyond `maxHosts`. */
  private keep(host: string, entry: Entry): void {
    this.entries.delete(host);
    this.entries.set(host, entry);
    for (const oldest of this.entries.keys()) {
      if (this.entries.size <= this.maxHosts) break;
      this.entries.delete(oldest);
    }
  }

  /** Once per lookup, at warn: the host only (never a number or a secret), how long it has waited, what is in flight. */
  private warn(host: string, lookup: Lookup, why: string): void {
    if (lookup.warned) return;
    lookup.warned = true;
    const { running, waiting } = this.stats();
    this.options.logger?.warn(
      { host, waited_ms: Date.now() - lookup.queuedAt, lookups_running: running, lookups_waiting: waiting },
      `webhook host lookup timed out: ${why}`,
    );
  }
}
