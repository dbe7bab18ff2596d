import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { TrunkConfig } from '../../src/config/schema.js';
import { ClusterLimits, SharedRate } from '../../src/engine/cluster-limits.js';
import { TrunkPacer } from '../../src/engine/trunk-pacer.js';
import { Keys } from '../../src/store/keys.js';
import { REDIS_URL } from '../helpers/engine.js';

/**
 * sip.trunkLimits: cluster — two worker processes' pacers (each its own ClusterLimits, as two processes have) share a
 * trunk's CPS and channels through the real Redis. What a carrier would see: the trunk's CPS and channel limit hold for
 * the two together, where each process's own limits (sip.trunkLimits: process) let through twice as much.
 */
const redis = new Redis(REDIS_URL);
let keys: Keys;
const pacers: TrunkPacer[] = [];
afterEach(async () => {
  for (const p of pacers.splice(0)) await p.close();
  const left = await redis.keys(`${keys.prefix}:*`);
  if (left.length > 0) await redis.del(...left);
});
afterAll(() => redis.disconnect());

const trunk = (name: string, extra: Partial<TrunkConfig> = {}) =>
  ({ name, uri: 'sip:127.0.0.1', cps: 100, ringOn183: false, dummySdp: false, headers: {}, ...extra }) as TrunkConfig;

/** Two workers' pacers on one prefix; `cluster` false: each keeps to its own limits. */
function twoWorkers(trunks: TrunkConfig[], cluster = true, options: { leaseMs?: number; pollMs?: number } = {}): [TrunkPacer, TrunkPacer] {
  keys = new Keys(`fvtest-${randomBytes(4).toString('hex')}`);
  const make = (worker: string) => {
    const p = new TrunkPacer(trunks, undefined, undefined, Date.now, cluster ? new ClusterLimits(redis, keys, worker, options) : undefined);
    pacers.push(p);
    return p;
  };
  return [make('w1'), make('w2')];
}

/** A channel asked for: whether it was granted yet, and the grant (its release). */
function asked(pacer: TrunkPacer, t: TrunkConfig): { got: () => boolean; release: Promise<() => void> } {
  let got = false;
  const release = pacer.acquire(t).then((r) => ((got = true), r));
  return { got: () => got, release };
}

/** When each of `n` takes, alternating between the two pacers, was let go (ms after the first asked). */
async function takeTimes(a: TrunkPacer, b: TrunkPacer, t: TrunkConfig, n: number): Promise<number[]> {
  const start = performance.now();
  return Promise.all(Array.from({ length: n }, (_, i) => (i % 2 === 0 ? a : b).take(t).then(() => performance.now() - start)));
}

describe('sip.trunkLimits: cluster (Redis)', () => {
  it('cps 10 shared by two workers: 10 go at once, the next 20 at one every 100 ms across both', async () => {
    const t = trunk('carrier', { cps: 10 });
    const [a, b] = twoWorkers([t]);
    const times = (await takeTimes(a, b, t, 30)).sort((x, y) => x - y);
    // The idle trunk's burst: cps calls at once (one second's worth, as a process's own bucket).
    expect(times[9]!).toBeLessThan(300);
    // The other 20 at the trunk's rate, whatever the worker: the last no sooner than 20 intervals after the burst.
    expect(times[29]!).toBeGreaterThanOrEqual(1950);
    // In any second after the burst, at most cps (plus the slot on its edge).
    for (let i = 10; i < 30; i++) {
      const inSecond = times.filter((x) => x > times[i]! && x < times[i]! + 1000).length;
      expect(inSecond).toBeLessThanOrEqual(10);
    }
  });

  it('the same with sip.trunkLimits: process: each worker has the whole cps, so the two send twice the rate', async () => {
    const t = trunk('carrier', { cps: 10 });
    const [a, b] = twoWorkers([t], false);
    const times = (await takeTimes(a, b, t, 30)).sort((x, y) => x - y);
    // 15 each: 10 at once and 5 at 100 ms.
    expect(times[19]!).toBeLessThan(300);
    expect(times[29]!).toBeLessThan(1500);
  });

  it('maxCalls 2 shared: a call of the second worker waits while the first holds both channels, and gets the one it frees', async () => {
    const t = trunk('carrier', { maxCalls: 2 });
    const [a, b] = twoWorkers([t], true, { pollMs: 20 });
    const held = [await a.acquire(t), await a.acquire(t)];
    const bAsks = asked(b, t);
    await new Promise((r) => setTimeout(r, 300));
    expect(bAsks.got()).toBe(false);
    expect(b.status()[0]).toMatchObject({ calls: 0, waiting: 1 });
    // Redis holds the count of each worker (what an operator reads).
    expect(await redis.hgetall(keys.trunkChannels('carrier'))).toEqual({ w1: '2' });
    held[0]!();
    const releaseB = await bAsks.release;
    expect(b.status()[0]).toMatchObject({ calls: 1, waiting: 0 });
    expect(await redis.hgetall(keys.trunkChannels('carrier'))).toEqual({ w1: '1', w2: '1' });
    // And a third call of the first worker now waits in its turn.
    const aAsks = asked(a, t);
    await new Promise((r) => setTimeout(r, 200));
    expect(aAsks.got()).toBe(false);
    releaseB();
    (await aAsks.release)();
    held[1]!();
    await new Promise((r) => setTimeout(r, 50));
    expect(await redis.hgetall(keys.trunkChannels('carrier'))).toEqual({});
  });

  it('maxCalls 2 shared under contention: a worker whose calls keep waiting does not keep both channels; the other worker\'s calls get their share', async () => {
    const t = trunk('carrier', { maxCalls: 2 });
    const [a, b] = twoWorkers([t], true, { pollMs: 20 });
    const order: string[] = [];
    let inUse = 0;
    let most = 0;
    const calls = (p: TrunkPacer, who: string, n: number) =>
      Promise.all(
        Array.from({ length: n }, async () => {
          const release = await p.acquire(t);
          order.push(who);
          most = Math.max(most, ++inUse);
          await new Promise((r) => setTimeout(r, 60));
          inUse--;
          release();
        }),
      );
    // The first worker's twelve calls: two hold the channels, ten wait (and keep waiting as each ends).
    const first = calls(a, 'a', 12);
    while (order.length < 2) await new Promise((r) => setTimeout(r, 5));
    const second = calls(b, 'b', 6);
    await Promise.all([first, second]);
    expect(most).toBeLessThanOrEqual(2);
    // The second worker's calls went while the first still had calls waiting: one channel each, near enough.
    const lastOfFirst = order.lastIndexOf('a');
    expect(order.slice(0, lastOfFirst).filter((w) => w === 'b').length).toBeGreaterThanOrEqual(4);
    await new Promise((r) => setTimeout(r, 50));
    expect(await redis.hgetall(keys.trunkChannels('carrier'))).toEqual({});
  });

  it('a worker that died holding channels no longer counts once its lease lapses', async () => {
    const t = trunk('carrier', { maxCalls: 1 });
    const [a, b] = twoWorkers([t], true, { leaseMs: 400, pollMs: 20 });
    await a.acquire(t);
    // a dies: no release, no renewal (start() was never called), no close().
    pacers.splice(pacers.indexOf(a), 1);
    const started = performance.now();
    await b.acquire(t);
    expect(performance.now() - started).toBeGreaterThanOrEqual(300);
    expect(await redis.hgetall(keys.trunkChannels('carrier'))).toEqual({ w2: '1' });
  });

  it('a worker that keeps its lease renewed (start()) keeps its channel past the lease', async () => {
    const t = trunk('carrier', { maxCalls: 1 });
    const [a, b] = twoWorkers([t], true, { leaseMs: 300, pollMs: 20 });
    a.start();
    const release = await a.acquire(t);
    const bAsks = asked(b, t);
    await new Promise((r) => setTimeout(r, 900));
    expect(bAsks.got()).toBe(false);
    release();
    (await bAsks.release)();
  });

  it('pick() passes over a trunk another worker has filled, once this worker has read its use', async () => {
    const full = trunk('first', { maxCalls: 1 });
    const other = trunk('second', { maxCalls: 1 });
    const [a, b] = twoWorkers([full, other], true, { pollMs: 20 });
    // Both trunks share priority 0: a's first pick is `first` (weights equal, first in order).
    expect(a.pick()).toBe(full);
    await a.acquire(full);
    // b learns the trunks' use from its renewal (start(): at once here, then every second).
    b.start();
    await new Promise((r) => setTimeout(r, 200));
    expect(b.status().map((s) => s.name)).toEqual(['first', 'second']);
    for (let i = 0; i < 3; i++) expect(b.pick()).toBe(other);
  });

  it('a rate below one a second (an SMSC account\'s accountTps 0.5): the first goes at once, the next two seconds later', async () => {
    keys = new Keys(`fvtest-${randomBytes(4).toString('hex')}`);
    const rate = new SharedRate(redis, keys.smscRate('slow'), 0.5, (err) => {
      throw err;
    });
    const start = performance.now();
    await rate.take();
    expect(performance.now() - start).toBeLessThan(300);
    await rate.take();
    expect(performance.now() - start).toBeGreaterThanOrEqual(1900);
  });

  it('Redis failing: the worker keeps to its own limits and lets its calls go', async () => {
    const t = trunk('carrier', { cps: 5, maxCalls: 1 });
    keys = new Keys(`fvtest-${randomBytes(4).toString('hex')}`);
    const dead = new Redis({ port: 1, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
    dead.on('error', () => undefined);
    const fallbacks: string[] = [];
    const onFallback = (trunkName: string, limit: string) => void fallbacks.push(`${trunkName} ${limit}`);
    const pacer = new TrunkPacer([t], undefined, undefined, Date.now, new ClusterLimits(dead, keys, 'w1', { onFallback }));
    const release = await pacer.acquire(t);
    await pacer.take(t);
    release();
    expect(pacer.status()[0]).toMatchObject({ calls: 0, waiting: 0 });
    // Each fallback counted (flashverify_trunk_limit_fallbacks_total): the channel's take and give, the CPS slot.
    await new Promise((r) => setTimeout(r, 50));
    expect(fallbacks.sort()).toEqual(['carrier channels', 'carrier channels', 'carrier cps']);
    dead.disconnect();
  });
});
