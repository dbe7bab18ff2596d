import { describe, expect, it } from 'vitest';
import type { TrunkConfig } from '../../../src/config/schema.js';
import { TrunkPacer, trunkVerdict } from '../../../src/engine/trunk-pacer.js';

const trunk = (name: string, extra: Partial<TrunkConfig> = {}) =>
  ({ name, uri: 'sip:127.0.0.1', cps: 100, ringOn183: false, dummySdp: false, headers: {}, ...extra }) as TrunkConfig;
const health = { failuresToMarkDown: 3, retryAfterMs: 1000, maxRetryAfterMs: 4000 };

function pacer(trunks: TrunkConfig[]) {
  let now = 0;
  const changes: string[] = [];
  const p = new TrunkPacer(trunks, health, (name, up) => changes.push(`${name}:${up ? 'up' : 'down'}`), () => now);
  return { p, changes, advance: (ms: number) => (now += ms) };
}
const picks = (p: TrunkPacer, n: number) => Array.from({ length: n }, () => p.pick().name);

describe('TrunkPacer health and failover', () => {
  it('maps call outcomes to trunk verdicts; a 503 (sip.trunkHealth.failureStatuses) is the trunk failing, any other answer a live trunk', () => {
    const v = (outcome: string): string => trunkVerdict(outcome);
    expect(['unreachable', 'timeout'].map(v)).toEqual(['failed', 'failed']);
    expect(['cancelled', 'answered', 'busy', 'rejected', 'played'].map(v)).toEqual(['up', 'up', 'up', 'up', 'up']);
    expect(['no_ringing', 'no_cli', 'no_media_resources', 'shutdown'].map(v)).toEqual(['neutral', 'neutral', 'neutral', 'neutral']);
    expect(trunkVerdict('rejected', 503)).toBe('failed');
    expect(trunkVerdict('rejected', 500)).toBe('up');
    expect(trunkVerdict('busy', 486)).toBe('up');
    expect(trunkVerdict('rejected', 503, [])).toBe('up');
    expect(trunkVerdict('rejected', 502, [502, 503])).toBe('failed');
    // A flash call that rang, then got a 503 (the trunk delivered the ring), and outcomes that say nothing of the trunk.
    expect(trunkVerdict('cancelled', 503)).toBe('up');
    expect(trunkVerdict('no_ringing', 503)).toBe('neutral');
  });

  it('a trunk answering 503 to every call is marked down like a dead one, and its calls go to the backup', () => {
    const { p, changes } = pacer([trunk('a'), trunk('b', { priority: 1 })]);
    for (let i = 0; i < 3; i++) {
      const t = p.pick();
      expect(t.name).toBe('a');
      p.report(t, p.verdictOf('rejected', 503));
    }
    expect(changes).toEqual(['a:down']);
    expect(p.pick().name).toBe('b');
  });

  it('shares calls among trunks of one priority by weight, and keeps higher priorities for failover', () => {
    const { p } = pacer([trunk('a', { weight: 3 }), trunk('b'), trunk('c', { priority: 1 })]);
    const got = picks(p, 8);
    expect(got.filter((n) => n === 'a')).toHaveLength(6);
    expect(got.filter((n) => n === 'b')).toHaveLength(2);
    expect(got).not.toContain('c');
  });

  it('marks a trunk down after N unreachable/timeout in a row; any SIP answer resets the count', () => {
    const { p, changes } = pacer([trunk('a'), trunk('b', { priority: 1 })]);
    const a = trunk('a');
    p.report(a, 'failed');
    p.report(a, 'failed');
    p.report(a, 'up'); // a 486 Busy is an answer: the trunk is alive
    p.report(a, 'failed');
    p.report(a, 'failed');
    expect(p.status()).toMatchObject([{ name: 'a', up: true }, { name: 'b', up: true }]);
    p.report(a, 'failed');
    expect(p.status()[0]).toMatchObject({ name: 'a', up: false });
    expect(changes).toEqual(['a:down']);
    expect(picks(p, 3)).toEqual(['b', 'b', 'b']);
  });

  it('retries a down trunk with one probe call after the back-off, doubling the wait while it fails', () => {
    const { p, changes, advance } = pacer([trunk('a'), trunk('b', { priority: 1 })]);
    const a = trunk('a');
    for (let i = 0; i < 3; i++) p.report(a, 'failed');
    advance(999);
    expect(p.pick().name).toBe('b');
    advance(1);
    // The probe: one call, not all of them.
    expect(picks(p, 3)).toEqual(['a', 'b', 'b']);
    p.report(a, 'failed');
    advance(1999);
    expect(p.pick().name).toBe('b');
    advance(1);
    expect(p.pick().name).toBe('a');
    p.report(a, 'failed');
    advance(4000); // 8 s capped at maxRetryAfterMs 4 s
    expect(p.pick().name).toBe('a');
    p.report(a, 'up');
    expect(p.status()[0]!.up).toBe(true);
    expect(picks(p, 2)).toEqual(['a', 'a']);
    expect(changes).toEqual(['a:down', 'a:down', 'a:down', 'a:up']);
  });

  it('with every trunk down, still tries the one due first rather than not calling at all', () => {
    const { p, advance } = pacer([trunk('a'), trunk('b')]);
    for (let i = 0; i < 3; i++) p.report(trunk('a'), 'failed');
    advance(10);
    for (let i = 0; i < 3; i++) p.report(trunk('b'), 'failed');
    expect(p.status().every((t) => !t.up)).toBe(true);
    expect(p.pick().name).toBe('a');
  });

  it('a probe that is never reported (its job threw or hung) lapses after probeTimeoutMs: the trunk is probed again', () => {
    let now = 0;
    const p = new TrunkPacer([trunk('a'), trunk('b', { priority: 1 })], { ...health, probeTimeoutMs: 3000 }, () => undefined, () => now);
    const a = trunk('a');
    for (let i = 0; i < 3; i++) p.report(a, 'failed');
    now += 1000;
    expect(p.pick().name).toBe('a'); // the probe ... whose job dies before report()
    now += 2999;
    expect(picks(p, 2)).toEqual(['b', 'b']);
    now += 1;
    expect(p.pick().name).toBe('a'); // probed again
    p.report(a, 'up');
    expect(p.status()[0]).toMatchObject({ name: 'a', up: true });
  });

  it('a trunk watched by OPTIONS pings: pings and calls fail together, down it gets no probe call, an answered ping brings it back at once', () => {
    const { p, changes, advance } = pacer([trunk('a'), trunk('b', { priority: 1 })]);
    const a = trunk('a');
    p.setPinged(a, true);
    p.report(a, 'failed'); // a call: unreachable
    p.report(a, 'failed'); // a ping: timeout
    p.report(a, 'up'); // a ping answered (a 405 as well as a 200)
    p.report(a, 'failed');
    p.report(a, 'failed');
    expect(p.status()[0]!.up).toBe(true);
    p.report(a, 'failed'); // the third in a row, pings and calls together
    expect(p.status()[0]!.up).toBe(false);
    // However long it stays down, no customer call probes it: its pings do.
    advance(60_000);
    expect(picks(p, 3)).toEqual(['b', 'b', 'b']);
    p.report(a, 'failed'); // more failed pings change nothing, and log nothing
    expect(changes).toEqual(['a:down']);
    p.report(a, 'up');
    expect(p.status()[0]!.up).toBe(true);
    expect(picks(p, 2)).toEqual(['a', 'a']);
    expect(changes).toEqual(['a:down', 'a:up']);
  });

  it('guarded(): a step that throws reports the call neutral, releasing the probe at once', async () => {
    let now = 0;
    const p = new TrunkPacer([trunk('a'), trunk('b', { priority: 1 })], health, () => undefined, () => now);
    const a = trunk('a');
    for (let i = 0; i < 3; i++) p.report(a, 'failed');
    now += 1000;
    expect(p.pick().name).toBe('a');
    await expect(p.guarded(a, Promise.reject(new Error('redis gone')))).rejects.toThrow('redis gone');
    expect(p.pick().name).toBe('a'); // the next call probes (no wait for probeTimeoutMs)
    await expect(p.guarded(a, Promise.resolve(7))).resolves.toBe(7);
  });
});
