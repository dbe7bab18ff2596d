import { describe, expect, it } from 'vitest';
import type { TrunkConfig } from '../../../src/config/schema.js';
import { refusedBeforeRinging } from '../../../src/engine/route-advance.js';
import { TrunkPacer } from '../../../src/engine/trunk-pacer.js';

const call = (outcome: string, extra: { rang?: boolean; early?: boolean; sipStatus?: number } = {}) => ({ outcome, rang: false, early: false, ...extra });
const trunk = (name: string, extra: Partial<TrunkConfig> = {}) =>
  ({ name, uri: 'sip:127.0.0.1', cps: 100, ringOn183: false, dummySdp: false, headers: {}, ...extra }) as TrunkConfig;

describe('route advance', () => {
  it('places again only a call its trunk refused before the far end took it: unreachable, or a failure status', () => {
    expect(refusedBeforeRinging(call('unreachable'), [503])).toBe('unreachable');
    expect(refusedBeforeRinging(call('rejected', { sipStatus: 503 }), [503])).toBe('sip_503');
    expect(refusedBeforeRinging(call('rejected', { sipStatus: 502 }), [502, 503])).toBe('sip_502');
    // The callee's answers, and what may have reached the network, are not the trunk's refusal.
    expect(refusedBeforeRinging(call('rejected', { sipStatus: 500 }), [503])).toBeUndefined();
    expect(refusedBeforeRinging(call('busy', { sipStatus: 486 }), [503])).toBeUndefined();
    expect(refusedBeforeRinging(call('timeout'), [503])).toBeUndefined();
    expect(refusedBeforeRinging(call('no_ringing'), [503])).toBeUndefined();
    expect(refusedBeforeRinging(call('rejected', { sipStatus: 503 }), [])).toBeUndefined();
    // Anything after the far end took the call: a 183 (early), ringing, an answer.
    expect(refusedBeforeRinging(call('rejected', { sipStatus: 503, early: true }), [503])).toBeUndefined();
    expect(refusedBeforeRinging(call('cancelled', { sipStatus: 503, rang: true, early: true }), [503])).toBeUndefined();
    expect(refusedBeforeRinging(call('answered', { sipStatus: 200 }), [503])).toBeUndefined();
  });

  it('pickAnother: a live trunk not tried yet, by priority then weight; a down one or none left: undefined', () => {
    let now = 0;
    const a = trunk('a');
    const b = trunk('b', { priority: 1 });
    const c = trunk('c', { priority: 2 });
    const p = new TrunkPacer([a, b, c], { failuresToMarkDown: 1, retryAfterMs: 1000, maxRetryAfterMs: 1000 }, () => undefined, () => now);
    expect(p.pickAnother(new Set(['a']))).toBe(b);
    expect(p.pickAnother(new Set(['a', 'b']))).toBe(c);
    expect(p.pickAnother(new Set(['a', 'b', 'c']))).toBeUndefined();
    p.report(b, 'failed'); // b down
    expect(p.pickAnother(new Set(['a']))).toBe(c);
    now += 5000; // b's probe is due: pick() would probe it, pickAnother leaves it to a new call
    expect(p.pickAnother(new Set(['a', 'c']))).toBeUndefined();
  });
});
