import { describe, expect, it } from 'vitest';
import { reconnectDelay } from '../../../../src/sip/drachtio/drachtio-connection.js';
import { drachtioFailure } from '../../../../src/sip/drachtio/drachtio-originator.js';
import { failureReasonFor } from '../../../../src/sip/uac.js';

describe('drachtioFailure: final status → failure reason', () => {
  it.each([
    [486, 'busy'],
    [600, 'busy'],
    [603, 'declined'],
    [404, 'not_found'],
    [604, 'not_found'],
    [480, 'unavailable'],
    [302, 'redirected'],
    [407, 'rejected'],
    [500, 'rejected'],
    [503, 'rejected'],
  ] as const)('%i → %s, as on the embedded stack', (status, reason) => {
    expect(drachtioFailure(status, 'x', true)).toEqual({ reason, status, phrase: 'x' });
    expect(drachtioFailure(status, undefined, false).reason).toBe(failureReasonFor(status));
  });

  it("a 408 that is the first response is drachtio-server's Timer B: timeout", () => {
    expect(drachtioFailure(408, 'Request Timeout', false)).toEqual({ reason: 'timeout', status: 408, phrase: 'Request Timeout' });
  });

  it('a 408 from the far end after a provisional is a rejection, like on the embedded stack', () => {
    expect(drachtioFailure(408, undefined, true)).toEqual({ reason: 'rejected', status: 408 });
  });
});

describe('reconnectDelay: bounded, jittered back-off', () => {
  it('doubles from min and never leaves [min, max]', () => {
    expect(reconnectDelay(0, 1000, 30_000, () => 0.5)).toBe(1000);
    expect(reconnectDelay(1, 1000, 30_000, () => 0.5)).toBe(2000);
    expect(reconnectDelay(3, 1000, 30_000, () => 0.5)).toBe(8000);
    expect(reconnectDelay(10, 1000, 30_000, () => 0.5)).toBe(30_000);
    expect(reconnectDelay(1000, 1000, 30_000, () => 0.5)).toBe(30_000);
    for (const r of [0, 0.25, 0.999]) {
      for (let n = 0; n < 12; n++) {
        const d = reconnectDelay(n, 1000, 30_000, () => r);
        expect(d).toBeGreaterThanOrEqual(1000);
        expect(d).toBeLessThanOrEqual(30_000);
      }
    }
  });

  it('jitters by ±20 %', () => {
    expect(reconnectDelay(2, 1000, 30_000, () => 0)).toBe(3200);
    expect(reconnectDelay(2, 1000, 30_000, () => 1)).toBe(4800);
  });
});
