/**
 * Flow control seen from the SMSC: the window of unanswered submit_sm per bind,
 * the TPS bucket per bind, and load spread over binds.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SharedCount, SharedRate } from '../../../src/engine/cluster-limits.js';
import { Keys } from '../../../src/store/keys.js';
import { REDIS_URL } from '../../helpers/engine.js';
import { smscEntry, startGateway, startSmsc, submitRequest, type GatewayUnderTest, type TestSmsc } from '../../helpers/smsc.js';

let smsc: TestSmsc;
let gut: GatewayUnderTest | undefined;

beforeAll(async () => {
  smsc = await startSmsc({ receipts: false });
});
afterAll(async () => {
  await smsc?.stop();
});
afterEach(async () => {
  await gut?.gateway.stop();
  gut = undefined;
  await smsc.set({ respDelayMs: 0 });
  await smsc.reset();
});

describe('window', () => {
  it('never has more than `window` submit_sm unanswered on a bind, and uses all of it', async () => {
    await smsc.set({ respDelayMs: 150 });
    gut = await startGateway([smscEntry(smsc, { window: 3 })]);
    await gut.waitUp();
    const outcomes = await Promise.all(Array.from({ length: 15 }, (_, i) => gut!.gateway.submit(submitRequest(`+4477009002${String(i).padStart(2, '0')}`))));
    expect(outcomes.every((o) => o.kind === 'accepted')).toBe(true);
    const state = await smsc.state();
    const bound = state.sessions.filter((s) => s.bound);
    expect(bound).toHaveLength(1);
    expect(bound[0]?.submits).toBe(15);
    expect(bound[0]?.maxInFlight).toBe(3);
    expect(gut.gateway.status()[0]).toMatchObject({ inFlight: 0, window: 3 });
  });

  it('a submit waiting for a slot gives up after slotWaitMs with no_bind', async () => {
    await smsc.set({ respDelayMs: 400 });
    gut = await startGateway([smscEntry(smsc, { window: 1, responseTimeoutMs: 2_000 })], { slotWaitMs: 100 });
    await gut.waitUp();
    const first = gut.gateway.submit(submitRequest('+447700900301'));
    const t = performance.now();
    expect(await gut.gateway.submit(submitRequest('+447700900302'))).toMatchObject({ kind: 'retry', reason: 'no_bind' });
    // Waiting for the slot would have taken ~400 ms and ended accepted.
    expect(performance.now() - t).toBeLessThan(1_000);
    expect((await first).kind).toBe('accepted');
  });
});

describe('TPS', () => {
  it('sends at most `tps` submit_sm in any one second per bind, the first second after idle included', async () => {
    const tps = 20;
    gut = await startGateway([smscEntry(smsc, { tps, window: 50 })]);
    await gut.waitUp();
    const n = 60;
    const outcomes = await Promise.all(Array.from({ length: n }, (_, i) => gut!.gateway.submit(submitRequest(`+4477009004${String(i).padStart(2, '0')}`))));
    expect(outcomes.every((o) => o.kind === 'accepted')).toBe(true);
    const at = (await smsc.state()).submits.map((s) => s.at).sort((a, b) => a - b);
    expect(at).toHaveLength(n);
    // tps at once, then tps more as the first of them is a second old: 60 take two seconds.
    const span = (at[n - 1] ?? 0) - (at[0] ?? 0);
    expect(span).toBeGreaterThanOrEqual(((n - tps) / tps) * 1000 * 0.9);
    // No one-second window holds more than tps, the first included (a window is measured on the SMSC's clock as the
    // submits arrive: 50 ms of network jitter allowed for).
    for (const start of at) {
      expect(at.filter((t) => t >= start && t < start + 950).length).toBeLessThanOrEqual(tps);
    }
  });
});

describe('binds', () => {
  it('4 binds share the load', async () => {
    await smsc.set({ respDelayMs: 50 });
    gut = await startGateway([smscEntry(smsc, { binds: 4, window: 2 })]);
    await gut.waitUp();
    expect(gut.gateway.status()).toEqual([{ name: 'default', bindsUp: 4, receiversUp: 4, bindsConfigured: 4, bindsStarted: 4, inFlight: 0, window: 8 }]);
    const outcomes = await Promise.all(Array.from({ length: 40 }, (_, i) => gut!.gateway.submit(submitRequest(`+4477009005${String(i).padStart(2, '0')}`))));
    expect(outcomes.every((o) => o.kind === 'accepted')).toBe(true);
    const usedBinds = new Set(outcomes.map((o) => (o.kind === 'accepted' ? o.bind : '')));
    expect(usedBinds).toEqual(new Set(['default#0', 'default#1', 'default#2', 'default#3']));
    const sessions = (await smsc.state()).sessions.filter((s) => s.bound);
    expect(sessions).toHaveLength(4);
    for (const s of sessions) {
      expect(s.maxInFlight).toBeLessThanOrEqual(2);
      expect(s.submits).toBeGreaterThanOrEqual(6);
    }
    expect(sessions.reduce((n, s) => n + s.submits, 0)).toBe(40);
  });
});

describe('accountTps: the SMSC account\'s rate over every bind of every worker process', () => {
  it('two workers\' gateways of two binds each (50/s per bind) keep together to accountTps 10, counted in Redis', async () => {
    const redis = new Redis(REDIS_URL);
    const keys = new Keys(`fvtest-${randomBytes(4).toString('hex')}`);
    const failures: Error[] = [];
    const accountRate = (smscSettings: { name: string; accountTps?: number | undefined }) =>
      new SharedRate(redis, keys.smscRate(smscSettings.name), smscSettings.accountTps!, (err) => void failures.push(err));
    const entry = smscEntry(smsc, { binds: 2, tps: 50, window: 20, accountTps: 10 });
    const workers = [await startGateway([entry], { accountRate }), await startGateway([entry], { accountRate })];
    try {
      await Promise.all(workers.map((w) => w.waitUp()));
      const n = 30;
      const outcomes = await Promise.all(
        Array.from({ length: n }, (_, i) => workers[i % 2]!.gateway.submit(submitRequest(`+4477009006${String(i).padStart(2, '0')}`))),
      );
      expect(outcomes.every((o) => o.kind === 'accepted')).toBe(true);
      expect(failures).toEqual([]);
      const at = (await smsc.state()).submits.map((x) => x.at).sort((a, b) => a - b);
      expect(at).toHaveLength(n);
      // Ten at once (an idle account's second), the other twenty at 10/s across the four binds: about 2 s. The binds'
      // own rate (4 × 50/s) would have sent all thirty at once.
      expect(at[n - 1]! - at[0]!).toBeGreaterThanOrEqual(1800);
      const afterBurst = at.slice(10);
      for (const start of afterBurst) expect(afterBurst.filter((t) => t >= start && t < start + 1000).length).toBeLessThanOrEqual(12);
    } finally {
      for (const w of workers) await w.gateway.stop();
      await redis.del(keys.smscRate('default'));
      redis.disconnect();
    }
  });
});

describe('maxBinds: the SMSC account\'s binds over every worker process', () => {
  it('two workers of two binds each and maxBinds 3: three binds at the SMSC; when the first stops, the second opens its other one', async () => {
    const redis = new Redis(REDIS_URL);
    const keys = new Keys(`fvtest-${randomBytes(4).toString('hex')}`);
    const bindSlots = (worker: string) => (settings: { name: string; maxBinds?: number | undefined }) =>
      new SharedCount(redis, { count: keys.smscBinds(settings.name), leases: keys.smscBindLeases(settings.name), wants: keys.smscBindWants(settings.name) }, worker, settings.maxBinds!);
    const entry = smscEntry(smsc, { binds: 2, maxBinds: 3 });
    const bound = async () => (await smsc.state()).sessions.filter((x) => x.bound && x.closedAt === null).length;
    const first = await startGateway([entry], { bindSlots: bindSlots('w1'), bindSlotPollMs: 200 });
    let second: Awaited<ReturnType<typeof startGateway>> | undefined;
    try {
      await first.waitUp();
      second = await startGateway([entry], { bindSlots: bindSlots('w2'), bindSlotPollMs: 200 });
      await waitUntil(async () => (await bound()) === 3);
      await waitUntil(async () => second!.gateway.status()[0]!.bindsUp === 1);
      // The window gauge counts the binds each worker has up: 2 × 10 and 1 × 10, not 2 × 10 for both.
      expect(first.gateway.status()[0]).toMatchObject({ bindsStarted: 2, bindsUp: 2, bindsConfigured: 2, window: 20 });
      expect(second.gateway.status()[0]).toMatchObject({ bindsStarted: 1, bindsConfigured: 2, window: 10 });
      // Held over a few polls: never a fourth.
      await new Promise((r) => setTimeout(r, 600));
      expect(await bound()).toBe(3);
      expect(await redis.hgetall(keys.smscBinds('default'))).toEqual({ w1: '2', w2: '1' });
      // A third worker gets none: its submits go back at once (no_bind, the job retried where a bind is), no bind wait.
      const third = await startGateway([entry], { bindSlots: bindSlots('w3'), bindSlotPollMs: 200, bindWaitMs: 2000 });
      try {
        expect(third.gateway.status()[0]).toMatchObject({ bindsStarted: 0, bindsUp: 0 });
        const t0 = performance.now();
        expect(await third.gateway.submit(submitRequest('+447700900777'))).toMatchObject({ kind: 'retry', reason: 'no_bind' });
        expect(performance.now() - t0).toBeLessThan(500);
      } finally {
        await third.gateway.stop();
      }
      await first.gateway.stop();
      await waitUntil(async () => second!.gateway.status()[0]!.bindsUp === 2);
      expect(await redis.hgetall(keys.smscBinds('default'))).toEqual({ w2: '2' });
    } finally {
      await first.gateway.stop();
      await second?.gateway.stop();
      await redis.del(keys.smscBinds('default'), keys.smscBindLeases('default'), keys.smscBindWants('default'));
      redis.disconnect();
    }
  });
});

async function waitUntil(check: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('condition not met');
    await new Promise((r) => setTimeout(r, 50));
  }
}
