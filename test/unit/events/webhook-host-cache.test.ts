import type { LookupAddress } from 'node:dns';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { WebhookHostCache, type WebhookHostCacheOptions } from '../../../src/events/webhook-host-cache.js';
import { WebhookLookupTimeoutError, type ResolveAll } from '../../../src/events/webhook-target.js';

/** Lets pending promise callbacks run (setImmediate is left real). */
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

/** A resolver the test answers by hand: it counts the lookups asked of it and how many run at once. */
class ScriptedResolver {
  readonly asked: string[] = [];
  running = 0;
  maxRunning = 0;
  private readonly open = new Map<string, { resolve: (a: LookupAddress[]) => void; reject: (e: Error) => void }[]>();

  readonly resolveAll: ResolveAll = (host) => {
    this.asked.push(host);
    this.running++;
    this.maxRunning = Math.max(this.maxRunning, this.running);
    return new Promise<LookupAddress[]>((resolve, reject) => {
      this.open.set(host, [...(this.open.get(host) ?? []), { resolve, reject }]);
    }).finally(() => this.running--);
  };

  /** Answers the oldest open lookup of `host`. */
  answer(host: string, ...addresses: string[]): void {
    this.take(host).resolve(addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 })));
  }

  fail(host: string, code: string): void {
    this.take(host).reject(Object.assign(new Error(`getaddrinfo ${code} ${host}`), { code }));
  }

  private take(host: string): { resolve: (a: LookupAddress[]) => void; reject: (e: Error) => void } {
    const list = this.open.get(host) ?? [];
    const first = list.shift();
    if (!first) throw new Error(`no open lookup of ${host}`);
    return first;
  }
}

const addressesOf = (list: LookupAddress[]): string[] => list.map((a) => a.address);

describe('webhook host cache', () => {
  let dns: ScriptedResolver;
  const make = (options: Partial<WebhookHostCacheOptions> = {}): WebhookHostCache =>
    new WebhookHostCache({
      resolveAll: dns.resolveAll,
      cacheMs: 30_000,
      negativeCacheMs: 5_000,
      staleMs: 300_000,
      staleWaitMs: 1_000,
      maxLookups: 2,
      ...options,
    });

  /** Looks `host` up through `cache` and has the resolver answer `addresses`. */
  const lookedUp = async (cache: WebhookHostCache, host: string, ...addresses: string[]): Promise<LookupAddress[]> => {
    const pending = cache.resolve(host);
    await settle();
    dns.answer(host, ...addresses);
    return pending;
  };

  beforeEach(() => {
    dns = new ScriptedResolver();
    vi.useFakeTimers({ toFake: ['Date', 'setTimeout', 'clearTimeout'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('answers from the cache until cacheMs has passed, then looks the host up again', async () => {
    const cache = make();
    expect(addressesOf(await lookedUp(cache, 'hooks.a.test', '203.0.113.7', '2001:db8::7'))).toEqual(['203.0.113.7', '2001:db8::7']);
    for (let i = 0; i < 5; i++) {
      vi.advanceTimersByTime(5_000);
      expect(addressesOf(await cache.resolve('hooks.a.test'))).toEqual(['203.0.113.7', '2001:db8::7']);
    }
    expect(dns.asked).toEqual(['hooks.a.test']);
    vi.advanceTimersByTime(5_000); // 30 s since the answer
    const again = cache.resolve('hooks.a.test');
    await settle();
    expect(dns.asked).toEqual(['hooks.a.test', 'hooks.a.test']);
    dns.answer('hooks.a.test', '203.0.113.8');
    expect(addressesOf(await again)).toEqual(['203.0.113.8']);
  });

  it('single flight: deliveries that want a host while it is looked up share that one lookup', async () => {
    const cache = make();
    const waiting = Array.from({ length: 10 }, () => cache.resolve('hooks.a.test'));
    const other = cache.resolve('hooks.b.test');
    await settle();
    expect(dns.asked).toEqual(['hooks.a.test', 'hooks.b.test']);
    dns.answer('hooks.a.test', '203.0.113.7');
    dns.answer('hooks.b.test', '203.0.113.9');
    for (const list of await Promise.all(waiting)) expect(addressesOf(list)).toEqual(['203.0.113.7']);
    expect(addressesOf(await other)).toEqual(['203.0.113.9']);
  });

  it('runs at most maxLookups lookups at once; the others wait in turn, and a slot freed starts the next', async () => {
    const cache = make({ maxLookups: 2 });
    const hosts = ['a', 'b', 'c', 'd', 'e'].map((h) => `hooks.${h}.test`);
    const results = Promise.allSettled(hosts.map((h) => cache.resolve(h)));
    await settle();
    expect(dns.asked).toEqual(['hooks.a.test', 'hooks.b.test']);
    expect(cache.stats()).toMatchObject({ running: 2, waiting: 3 });
    dns.answer('hooks.b.test', '203.0.113.2');
    await settle();
    expect(dns.asked).toEqual(['hooks.a.test', 'hooks.b.test', 'hooks.c.test']);
    expect(dns.maxRunning).toBe(2);
    dns.fail('hooks.a.test', 'EAI_AGAIN');
    dns.answer('hooks.c.test', '203.0.113.3');
    await settle();
    dns.answer('hooks.d.test', '203.0.113.4');
    dns.answer('hooks.e.test', '203.0.113.5');
    const settled = await results;
    expect(settled.map((r) => (r.status === 'fulfilled' ? addressesOf(r.value)[0] : (r.reason as NodeJS.ErrnoException).code))).toEqual([
      'EAI_AGAIN',
      '203.0.113.2',
      '203.0.113.3',
      '203.0.113.4',
      '203.0.113.5',
    ]);
    expect(dns.maxRunning).toBe(2);
    expect(cache.stats()).toMatchObject({ running: 0, waiting: 0 });
  });

  it('a delivery gives up at its deadline, waiting for a slot or for the resolver; the lookup goes on and its answer serves the retry', async () => {
    const cache = make({ maxLookups: 1 });
    const hung = new AbortController();
    const queued = new AbortController();
    const a = cache.resolve('hooks.hung.test', hung.signal);
    const b = cache.resolve('hooks.queued.test', queued.signal);
    await settle();
    expect(cache.stats()).toMatchObject({ running: 1, waiting: 1 });
    hung.abort();
    queued.abort();
    await expect(a).rejects.toBeInstanceOf(WebhookLookupTimeoutError);
    await expect(b).rejects.toThrow('timeout: no DNS answer for hooks.queued.test within the delivery timeout');
    // The resolver answers late: the queued lookup runs then, and both answers are kept.
    dns.answer('hooks.hung.test', '203.0.113.1');
    await settle();
    expect(dns.asked).toEqual(['hooks.hung.test', 'hooks.queued.test']);
    dns.answer('hooks.queued.test', '203.0.113.2');
    await settle();
    expect(addressesOf(await cache.resolve('hooks.hung.test'))).toEqual(['203.0.113.1']);
    expect(addressesOf(await cache.resolve('hooks.queued.test'))).toEqual(['203.0.113.2']);
    expect(dns.asked).toHaveLength(2);
  });

  it('keeps a failure negativeCacheMs: the host is not asked again meanwhile, and "no such name" ends its stale answer', async () => {
    const cache = make({ cacheMs: 1_000, negativeCacheMs: 5_000 });
    await lookedUp(cache, 'hooks.gone.test', '203.0.113.7');
    vi.advanceTimersByTime(1_000);
    const refresh = cache.resolve('hooks.gone.test');
    await settle();
    dns.fail('hooks.gone.test', 'ENOTFOUND');
    await expect(refresh).rejects.toMatchObject({ code: 'ENOTFOUND' });
    vi.advanceTimersByTime(4_999);
    await expect(cache.resolve('hooks.gone.test')).rejects.toMatchObject({ code: 'ENOTFOUND' });
    expect(dns.asked).toHaveLength(2);
    vi.advanceTimersByTime(1);
    const later = cache.resolve('hooks.gone.test');
    await settle();
    expect(dns.asked).toHaveLength(3);
    dns.answer('hooks.gone.test', '203.0.113.8');
    expect(addressesOf(await later)).toEqual(['203.0.113.8']);
  });

  it('stale if error: an expired answer is used while new lookups fail, at most staleMs after it expired', async () => {
    const cache = make({ cacheMs: 1_000, negativeCacheMs: 5_000, staleMs: 20_000 });
    await lookedUp(cache, 'hooks.flap.test', '203.0.113.7');
    vi.advanceTimersByTime(1_000);
    const refresh = cache.resolve('hooks.flap.test');
    await settle();
    dns.fail('hooks.flap.test', 'EAI_AGAIN');
    expect(addressesOf(await refresh)).toEqual(['203.0.113.7']);
    // The failure is kept: no lookup for 5 s, the stale answer meanwhile.
    vi.advanceTimersByTime(4_000);
    expect(addressesOf(await cache.resolve('hooks.flap.test'))).toEqual(['203.0.113.7']);
    expect(dns.asked).toHaveLength(2);
    // 21 s after it expired: too old to use; the failure is what the delivery gets.
    vi.advanceTimersByTime(16_000);
    const tooOld = cache.resolve('hooks.flap.test');
    await settle();
    dns.fail('hooks.flap.test', 'EAI_AGAIN');
    await expect(tooOld).rejects.toMatchObject({ code: 'EAI_AGAIN' });
    expect(dns.asked).toHaveLength(3);
  });

  it('stale if slow: a new lookup not answered within staleWaitMs gives the expired answer, and the next deliveries get it at once', async () => {
    const cache = make({ cacheMs: 1_000, staleWaitMs: 300 });
    await lookedUp(cache, 'hooks.slow.test', '203.0.113.7');
    vi.advanceTimersByTime(1_000);
    let got: LookupAddress[] | undefined;
    void cache.resolve('hooks.slow.test').then((list) => (got = list));
    await settle();
    vi.advanceTimersByTime(299);
    await settle();
    expect(got).toBeUndefined();
    vi.advanceTimersByTime(1);
    await settle();
    expect(addressesOf(got!)).toEqual(['203.0.113.7']);
    expect(addressesOf(await cache.resolve('hooks.slow.test'))).toEqual(['203.0.113.7']); // at once: no timer to run
    expect(dns.asked).toHaveLength(2);
    // The slow lookup answers at last: its answer is the fresh one from then on.
    dns.answer('hooks.slow.test', '203.0.113.8');
    await settle();
    expect(addressesOf(await cache.resolve('hooks.slow.test'))).toEqual(['203.0.113.8']);
    expect(dns.asked).toHaveLength(2);
  });

  it('keeps at most maxHosts hosts, forgetting the least recently used', async () => {
    const cache = make({ maxHosts: 2 });
    for (const h of ['a', 'b']) await lookedUp(cache, `hooks.${h}.test`, '203.0.113.1');
    await cache.resolve('hooks.a.test'); // a is now the most recently used
    await lookedUp(cache, 'hooks.c.test', '203.0.113.3');
    expect(cache.stats().hosts).toBe(2);
    await cache.resolve('hooks.a.test');
    await cache.resolve('hooks.c.test');
    expect(dns.asked).toEqual(['hooks.a.test', 'hooks.b.test', 'hooks.c.test']);
    void cache.resolve('hooks.b.test');
    await settle();
    expect(dns.asked).toEqual(['hooks.a.test', 'hooks.b.test', 'hooks.c.test', 'hooks.b.test']);
  });

  it('cacheMs 0 keeps nothing (each delivery asks again) but still shares a lookup in flight; IP literals are never looked up', async () => {
    const cache = make({ cacheMs: 0 });
    const both = [cache.resolve('hooks.a.test'), cache.resolve('hooks.a.test')];
    await settle();
    dns.answer('hooks.a.test', '203.0.113.7');
    await Promise.all(both);
    const next = cache.resolve('hooks.a.test');
    await settle();
    dns.fail('hooks.a.test', 'ENOTFOUND');
    await expect(next).rejects.toMatchObject({ code: 'ENOTFOUND' });
    const after = cache.resolve('hooks.a.test'); // the failure is not kept either
    await settle();
    dns.answer('hooks.a.test', '203.0.113.8');
    await after;
    expect(dns.asked).toEqual(['hooks.a.test', 'hooks.a.test', 'hooks.a.test']);
    expect(await cache.resolve('198.51.100.4')).toEqual([{ address: '198.51.100.4', family: 4 }]);
    expect(await cache.resolve('2001:db8::1')).toEqual([{ address: '2001:db8::1', family: 6 }]);
    expect(dns.asked).toHaveLength(3);
  });
});
