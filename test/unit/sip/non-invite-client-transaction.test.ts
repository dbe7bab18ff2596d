import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { NonInviteClientTransaction } from '../../../src/sip/transactions/non-invite-client-transaction.js';
import { TransactionState } from '../../../src/sip/transactions/transaction.js';
import { harness, response, type Harness } from './tx-helpers.js';

function setup(method: 'BYE' | 'CANCEL', reliable: boolean): { h: Harness; tx: NonInviteClientTransaction } {
  const h = harness(method, reliable);
  const tx = new NonInviteClientTransaction(h.options);
  tx.start();
  return { h, tx };
}

/** Times (ms) at which the request was (re)sent, sampling every millisecond up to `until`. */
function sendTimes(h: Harness, until: number, startAt = 0): number[] {
  const times: number[] = [];
  let last = h.sent.length;
  for (let t = startAt + 1; t <= until; t++) {
    vi.advanceTimersByTime(1);
    if (h.sent.length !== last) {
      times.push(t);
      last = h.sent.length;
    }
  }
  return times;
}

const FINALS = [200, 401, 481, 500, 603];

describe('NonInviteClientTransaction (RFC 3261 17.1.2)', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('rejects INVITE and ACK', () => {
    expect(() => new NonInviteClientTransaction(harness('INVITE', false).options)).toThrow();
    expect(() => new NonInviteClientTransaction(harness('ACK', false).options)).toThrow();
  });

  describe.each(['BYE', 'CANCEL'] as const)('%s', (method) => {
    const LINE = `${method} sip:+447700900000@127.0.0.1:5060;user=phone SIP/2.0`;

    it('Trying, UDP: Timer E doubles from T1 capped at T2; Timer F (64*T1) -> timeout', () => {
      const { h, tx } = setup(method, false);
      expect(tx.state).toBe(TransactionState.Trying);
      const times = sendTimes(h, 40_000);
      expect(times).toEqual([500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]);
      expect(h.sent.every((l) => l === LINE)).toBe(true);
      expect(h.events).toEqual(['timeout']);
      expect(tx.state).toBe(TransactionState.Terminated);
      expect(h.terminated).toBe(1);
    });

    it('Trying, TCP: no retransmissions; Timer F fires at 64*T1', () => {
      const { h, tx } = setup(method, true);
      vi.advanceTimersByTime(31_999);
      expect(h.sent).toEqual([LINE]);
      expect(h.events).toEqual([]);
      vi.advanceTimersByTime(1);
      expect(h.events).toEqual(['timeout']);
      expect(tx.state).toBe(TransactionState.Terminated);
    });

    it('Proceeding, UDP: 1xx -> TU; Timer E continues, then every T2; Timer F still applies', () => {
      const { h, tx } = setup(method, false);
      vi.advanceTimersByTime(100);
      tx.receiveResponse(response(100, method));
      expect(tx.state).toBe(TransactionState.Proceeding);
      expect(h.events).toEqual(['response 100']);
      const times = sendTimes(h, 40_000, 100);
      expect(times).toEqual([500, 4500, 8500, 12500, 16500, 20500, 24500, 28500]);
      expect(h.events).toEqual(['response 100', 'timeout']);
      expect(tx.state).toBe(TransactionState.Terminated);
    });

    it('Proceeding, TCP: no retransmissions', () => {
      const { h, tx } = setup(method, true);
      tx.receiveResponse(response(180, method));
      vi.advanceTimersByTime(31_000);
      expect(h.sent).toEqual([LINE]);
      expect(tx.state).toBe(TransactionState.Proceeding);
    });

    it.each(FINALS)('Trying + %i -> TU, Completed; Timer K = T4 on UDP; retransmissions absorbed', (status) => {
      const { h, tx } = setup(method, false);
      tx.receiveResponse(response(status, method));
      expect(h.events).toEqual([`response ${status}`]);
      expect(tx.state).toBe(TransactionState.Completed);
      tx.receiveResponse(response(status, method));
      tx.receiveResponse(response(100, method));
      expect(h.events).toEqual([`response ${status}`]);
      vi.advanceTimersByTime(4_999);
      expect(tx.state).toBe(TransactionState.Completed);
      vi.advanceTimersByTime(1);
      expect(tx.state).toBe(TransactionState.Terminated);
      expect(h.terminated).toBe(1);
      expect(h.sent).toEqual([LINE]);
    });

    it.each(FINALS)('Proceeding + %i -> TU, Completed', (status) => {
      const { h, tx } = setup(method, false);
      tx.receiveResponse(response(100, method));
      tx.receiveResponse(response(status, method));
      expect(h.events).toEqual(['response 100', `response ${status}`]);
      expect(tx.state).toBe(TransactionState.Completed);
      vi.advanceTimersByTime(100_000);
      expect(h.sent).toEqual([LINE]);
    });

    it('TCP: Timer K is zero: Terminated at once on a final response', () => {
      const { h, tx } = setup(method, true);
      tx.receiveResponse(response(200, method));
      expect(h.events).toEqual(['response 200']);
      expect(tx.state).toBe(TransactionState.Terminated);
      expect(vi.getTimerCount()).toBe(0);
    });

    it.each([false, true])('transport error in Trying -> TU, Terminated (reliable=%s)', (reliable) => {
      const { h, tx } = setup(method, reliable);
      tx.onTransportError(new Error('ECONNREFUSED'));
      expect(h.events).toEqual(['transport error ECONNREFUSED']);
      expect(tx.state).toBe(TransactionState.Terminated);
      expect(vi.getTimerCount()).toBe(0);
    });

    it('transport error in Proceeding -> TU, Terminated', () => {
      const { h, tx } = setup(method, false);
      tx.receiveResponse(response(100, method));
      tx.onTransportError(new Error('ECONNRESET'));
      expect(h.events).toEqual(['response 100', 'transport error ECONNRESET']);
      expect(tx.state).toBe(TransactionState.Terminated);
    });

    it('transport error in Completed / Terminated is ignored', () => {
      const { h, tx } = setup(method, false);
      tx.receiveResponse(response(200, method));
      tx.onTransportError(new Error('late'));
      expect(tx.state).toBe(TransactionState.Completed);
      vi.advanceTimersByTime(5_000);
      tx.onTransportError(new Error('later'));
      tx.receiveResponse(response(200, method));
      expect(h.events).toEqual(['response 200']);
      expect(tx.state).toBe(TransactionState.Terminated);
    });

    it('dispose() stops every timer silently', () => {
      const { h, tx } = setup(method, false);
      tx.dispose();
      expect(vi.getTimerCount()).toBe(0);
      vi.advanceTimersByTime(100_000);
      expect(h.sent).toEqual([LINE]);
      expect(h.events).toEqual([]);
    });
  });
});
