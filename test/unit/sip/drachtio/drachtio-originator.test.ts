import { describe, expect, it } from 'vitest';
import { reconnectDelay } from '../../../../src/sip/drachtio/drachtio-connection.js';
import { drachtioFailure, drachtioPingOutcome } from '../../../../src/sip/drachtio/drachtio-originator.js';
import { failureReasonFor } from '../../../../src/sip/uac.js';

describe('drachtioPingOutcome: a final response to an OPTIONS ping', () => {
  it.each([200, 401, 403, 404, 405, 407, 480, 500, 503, 604])("%i from the far end (To tagged) is an answer", (status) => {
    expect(drachtioPingOutcome(status, '<sip:192.0.2.10:5060>;tag=a8f3')).toBe('answered');
    expect(drachtioPingOutcome(status, '<sip:192.0.2.10:5060> ; TAG=a8f3')).toBe('answered');
  });

  it("a 408 is drachtio-server's Timer F (RFC 4320: no SIP element sends one to a non-INVITE): timeout", () => {
    expect(drachtioPingOutcome(408, '<sip:192.0.2.10:5060>')).toBe('timeout');
    expect(drachtioPingOutcome(408, '<sip:192.0.2.10:5060>;tag=x')).toBe('timeout');
  });

  it("another final response with an untagged To is drachtio-server's own (a transport error), not the trunk's: unreachable", () => {
    expect(drachtioPingOutcome(503, '<sip:192.0.2.10:5060>')).toBe('unreachable');
    expect(drachtioPingOutcome(500, undefined)).toBe('unreachable');
  });
});

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
