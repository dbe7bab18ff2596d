import { describe, expect, it, vi } from 'vitest';
import type { TrunkConfig } from '../../../src/config/schema.js';
import { TrunkPacer } from '../../../src/engine/trunk-pacer.js';

const trunk = (name: string, cps: number) =>
  ({ name, uri: 'sip:127.0.0.1', cps, ringOn183: false, dummySdp: false, headers: {} }) as TrunkConfig;

describe('TrunkPacer', () => {
  it('gives every channel of the process one CPS budget per trunk', async () => {
    vi.useFakeTimers();
    const a = trunk('a', 2);
    const pacer = new TrunkPacer([a, trunk('b', 2)]);
    expect(pacer.pick()).toBe(a);
    let done = 0;
    // Two "flash" takes and one "voice" take on the same trunk: the third waits.
    for (let i = 0; i < 3; i++) void pacer.take(a).then(() => done++);
    await vi.advanceTimersByTimeAsync(0);
    expect(done).toBe(2);
    // Another trunk has its own budget.
    void pacer.take(trunk('b', 2)).then(() => done++);
    await vi.advanceTimersByTimeAsync(0);
    expect(done).toBe(3);
    await vi.advanceTimersByTimeAsync(600);
    expect(done).toBe(4);
    vi.useRealTimers();
  });

  it('maxCalls: a full trunk hands its next call to a free one of the same priority, then of the next; all full, calls wait on the best', async () => {
    const a = { ...trunk('a', 100), maxCalls: 1 };
    const b = { ...trunk('b', 100), maxCalls: 1 };
    const c = { ...trunk('c', 100), maxCalls: 1, priority: 1 };
    const pacer = new TrunkPacer([a, b, c]);
    const releases: (() => void)[] = [];
    for (const expected of [a, b, c]) {
      const t = pacer.pick();
      expect(t).toBe(expected);
      releases.push(await pacer.acquire(t));
    }
    // Every trunk full: the lowest priority is picked (a and b share it by weight: b's turn), and its call waits there.
    const fourth = pacer.pick();
    expect(fourth).toBe(b);
    let got = false;
    const waiting = pacer.acquire(fourth).then((r) => ((got = true), r));
    await Promise.resolve();
    expect(got).toBe(false);
    expect(pacer.status().find((s) => s.name === 'b')).toMatchObject({ calls: 1, waiting: 1, maxCalls: 1 });
    // b's channel frees up: it goes to the waiting call.
    releases[1]!();
    expect(await waiting).toBeTypeOf('function');
    expect(got).toBe(true);
    // a's frees up: the next call goes to a, not to the full b.
    releases[0]!();
    expect(pacer.pick()).toBe(a);
  });

  it('maxCalls: a freed channel goes to the call that waited longest, and one arriving meanwhile cannot take it; releasing twice frees one', async () => {
    const a = { ...trunk('a', 100), maxCalls: 2 };
    const pacer = new TrunkPacer([a]);
    const first = await pacer.acquire(a);
    await pacer.acquire(a);
    const order: string[] = [];
    const w1 = pacer.acquire(a).then((r) => (order.push('w1'), r));
    const w2 = pacer.acquire(a).then((r) => (order.push('w2'), r));
    expect(pacer.status()[0]).toMatchObject({ calls: 2, waiting: 2 });
    first();
    first(); // a second release of the same call changes nothing
    // Arriving right after the release, before w1 has resumed: it queues behind w2.
    const late = pacer.acquire(a).then((r) => (order.push('late'), r));
    const r1 = await w1;
    expect(order).toEqual(['w1']);
    expect(pacer.status()[0]).toMatchObject({ calls: 2, waiting: 2 });
    r1();
    (await w2)();
    await late;
    expect(order).toEqual(['w1', 'w2', 'late']);
    expect(pacer.status()[0]).toMatchObject({ calls: 2, waiting: 0 });
  });

  it('without maxCalls a trunk is never full: every acquire resolves at once, and its calls are counted', async () => {
    const a = trunk('a', 100);
    const pacer = new TrunkPacer([a]);
    const releases = await Promise.all(Array.from({ length: 50 }, () => pacer.acquire(a)));
    expect(pacer.status()[0]).toMatchObject({ calls: 50, waiting: 0, maxCalls: undefined });
    for (const r of releases) r();
    expect(pacer.status()[0]).toMatchObject({ calls: 0, waiting: 0 });
  });

  it('drain(): a stopping worker lets the calls waiting for a channel go at once, over the cap, and waits for none after; the counts come back to 0', async () => {
    const a = { ...trunk('a', 100), maxCalls: 1 };
    const pacer = new TrunkPacer([a]);
    const held = await pacer.acquire(a);
    const waiting = [pacer.acquire(a), pacer.acquire(a)];
    expect(pacer.status()[0]).toMatchObject({ calls: 1, waiting: 2 });
    pacer.drain();
    const woken = await Promise.all(waiting);
    const late = await pacer.acquire(a);
    expect(pacer.status()[0]).toMatchObject({ calls: 4, waiting: 0 });
    for (const r of [held, ...woken, late]) r();
    expect(pacer.status()[0]).toMatchObject({ calls: 0, waiting: 0 });
  });

  it('prefixes: a number goes to the trunks of the longest prefix it starts with, else to the default route; failover and route advance stay within its route', () => {
    const uk = { ...trunk('uk', 100), prefixes: ['+44'] };
    const ukMobile = { ...trunk('uk-mobile', 100), prefixes: ['+447', '+4490'] };
    const ukBackup = { ...trunk('uk-backup', 100), prefixes: ['+44'], priority: 1 };
    const rest = trunk('rest', 100);
    const pacer = new TrunkPacer([rest, uk, ukMobile, ukBackup], { failuresToMarkDown: 1, retryAfterMs: 60_000, maxRetryAfterMs: 60_000 });
    expect(pacer.pick('+447700900123')).toBe(ukMobile);
    expect(pacer.pick('+441908736205')).toBe(uk);
    expect(pacer.pick('+33612345678')).toBe(rest);
    expect(pacer.pick()).toBe(rest); // no number: every trunk, as before routes
    // uk down: +441... fails over to uk-backup (same route, next priority), never to the default trunk.
    pacer.report(uk, 'failed');
    expect(pacer.pick('+441908736205')).toBe(ukBackup);
    expect(pacer.pickAnother(new Set(['uk-backup']), '+441908736205')).toBeUndefined();
    expect(pacer.pickAnother(new Set(['uk-mobile']), '+447700900123')).toBeUndefined();
    expect(pacer.routes('+33612345678')).toBe(true);
  });

  it('allowed trunks (a DID range\'s): the number is routed by prefix among them only', () => {
    const uk = { ...trunk('uk', 100), prefixes: ['+44'] };
    const ukCli = { ...trunk('uk-cli', 100), prefixes: ['+447'] };
    const rest = trunk('rest', 100);
    const pacer = new TrunkPacer([uk, ukCli, rest]);
    expect(pacer.pick('+447700900123')).toBe(ukCli);
    // The range may not go on uk-cli: among uk and rest, +44 is uk's.
    expect(pacer.pick('+447700900123', ['uk', 'rest'])).toBe(uk);
    expect(pacer.pick('+33612345678', ['uk', 'rest'])).toBe(rest);
    expect(pacer.routes('+33612345678', ['uk', 'uk-cli'])).toBe(false);
    expect(pacer.pickAnother(new Set(['uk']), '+447700900123', ['uk', 'rest'])).toBeUndefined();
  });

  it('setDisabled: a trunk taken out of service gets no new call, nor a route advance; none left for a number: routes() is false', () => {
    const a = trunk('a', 100);
    const b = { ...trunk('b', 100), priority: 1 };
    const pacer = new TrunkPacer([a, b]);
    pacer.setDisabled(new Set(['a']));
    expect(pacer.pick('+447700900123')).toBe(b);
    expect(pacer.pickAnother(new Set(['b']), '+447700900123')).toBeUndefined();
    expect(pacer.status().map((s) => [s.name, s.enabled])).toEqual([['a', false], ['b', true]]);
    pacer.setDisabled(new Set(['a', 'b']));
    expect(pacer.routes('+447700900123')).toBe(false);
    pacer.setDisabled(new Set());
    expect(pacer.pick('+447700900123')).toBe(a);
  });

  it('prefixes with no default route: routes() is false for a number no prefix matches, and pick() refuses it', () => {
    const pacer = new TrunkPacer([{ ...trunk('uk', 100), prefixes: ['+44'] }]);
    expect(pacer.routes('+447700900123')).toBe(true);
    expect(pacer.routes('+33612345678')).toBe(false);
    expect(() => pacer.pick('+33612345678')).toThrow(/no trunk routes this destination/);
  });
});
