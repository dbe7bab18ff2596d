import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { parseMessage } from '../../../src/sip/parser.js';
import { InviteClientTransaction } from '../../../src/sip/transactions/invite-client-transaction.js';
import { TransactionState } from '../../../src/sip/transactions/transaction.js';
import { BRANCH, harness, lastBytes, request as request0, response, type Harness } from './tx-helpers.js';

function setup(reliable: boolean): { h: Harness; tx: InviteClientTransaction } {
  const h = harness('INVITE', reliable);
  const tx = new InviteClientTransaction(h.options);
  tx.start();
  return { h, tx };
}

const INVITE_LINE = 'INVITE sip:+447700900000@127.0.0.1:5060;user=phone SIP/2.0';
const ACK_LINE = 'ACK sip:+447700900000@127.0.0.1:5060;user=phone SIP/2.0';
const FINALS = [302, 404, 407, 486, 487, 503, 603];

describe('InviteClientTransaction (RFC 3261 17.1.1)', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  describe('Calling', () => {
    it('UDP: Timer A retransmits at T1, 2T1, 4T1 ... (doubling, no cap) until Timer B (64*T1) reports timeout', () => {
      const { h, tx } = setup(false);
      expect(tx.state).toBe(TransactionState.Calling);
      const sendTimes: number[] = [];
      let last = h.sent.length;
      sendTimes.push(0);
      for (let t = 1; t <= 40_000; t++) {
        vi.advanceTimersByTime(1);
        if (h.sent.length !== last) {
          sendTimes.push(t);
          last = h.sent.length;
        }
        if (t === 31_999) expect(h.events).toEqual([]);
      }
      expect(sendTimes).toEqual([0, 500, 1500, 3500, 7500, 15500, 31500]);
      expect(h.sent.every((l) => l === INVITE_LINE)).toBe(true);
      expect(h.events).toEqual(['timeout']);
      expect(tx.state).toBe(TransactionState.Terminated);
      expect(h.terminated).toBe(1);
    });

    it('TCP: no retransmissions; Timer B still fires at 64*T1', () => {
      const { h, tx } = setup(true);
      vi.advanceTimersByTime(31_999);
      expect(h.sent).toEqual([INVITE_LINE]);
      expect(h.events).toEqual([]);
      vi.advanceTimersByTime(1);
      expect(h.events).toEqual(['timeout']);
      expect(tx.state).toBe(TransactionState.Terminated);
    });

    it.each([false, true])('1xx -> Proceeding, passed to TU, stops Timers A and B (reliable=%s)', (reliable) => {
      const { h, tx } = setup(reliable);
      vi.advanceTimersByTime(100);
      tx.receiveResponse(response(100, 'INVITE'));
      tx.receiveResponse(response(180, 'INVITE'));
      expect(tx.state).toBe(TransactionState.Proceeding);
      expect(h.events).toEqual(['response 100', 'response 180']);
      vi.advanceTimersByTime(120_000);
      expect(h.sent).toEqual([INVITE_LINE]);
      expect(h.events).toEqual(['response 100', 'response 180']);
      expect(tx.state).toBe(TransactionState.Proceeding);
    });

    it.each([false, true])('2xx -> TU, Terminated, no ACK from the transaction (reliable=%s)', (reliable) => {
      const { h, tx } = setup(reliable);
      tx.receiveResponse(response(200, 'INVITE'));
      expect(h.events).toEqual(['response 200']);
      expect(tx.state).toBe(TransactionState.Terminated);
      expect(h.terminated).toBe(1);
      vi.advanceTimersByTime(120_000);
      expect(h.sent).toEqual([INVITE_LINE]);
    });

    it.each(FINALS)('%i -> ACK (same branch, To tag of the response), TU, Completed', (status) => {
      const { h, tx } = setup(false);
      tx.receiveResponse(response(status, 'INVITE', 'remote-tag'));
      expect(h.sent).toEqual([INVITE_LINE, ACK_LINE]);
      const ack = parseMessage(Buffer.from(lastBytes.value));
      expect(ack.ok).toBe(true);
      if (!ack.ok || ack.message.kind !== 'request') return;
      expect(ack.message.via.branch).toBe(BRANCH);
      expect(ack.message.to.tag).toBe('remote-tag');
      expect(ack.message.from.tag).toBe('ft');
      expect(ack.message.cseq).toEqual({ seq: 1, method: 'ACK' });
      expect(ack.message.callId).toBe('tx-test');
      expect(h.events).toEqual([`response ${status}`]);
      expect(tx.state).toBe(TransactionState.Completed);
    });

    it('transport error -> TU, Terminated', () => {
      const { h, tx } = setup(false);
      tx.onTransportError(new Error('ECONNREFUSED'));
      expect(h.events).toEqual(['transport error ECONNREFUSED']);
      expect(tx.state).toBe(TransactionState.Terminated);
      vi.advanceTimersByTime(120_000);
      expect(h.sent).toEqual([INVITE_LINE]);
      expect(h.events).toHaveLength(1);
    });
  });

  describe('Proceeding', () => {
    function proceeding(reliable: boolean): { h: Harness; tx: InviteClientTransaction } {
      const s = setup(reliable);
      s.tx.receiveResponse(response(183, 'INVITE'));
      s.h.events.length = 0;
      return s;
    }

    it.each([false, true])('2xx -> TU, Terminated (reliable=%s)', (reliable) => {
      const { h, tx } = proceeding(reliable);
      tx.receiveResponse(response(200, 'INVITE'));
      expect(h.events).toEqual(['response 200']);
      expect(tx.state).toBe(TransactionState.Terminated);
    });

    it.each(FINALS)('%i -> ACK, TU, Completed', (status) => {
      const { h, tx } = proceeding(false);
      tx.receiveResponse(response(status, 'INVITE'));
      expect(h.sent).toEqual([INVITE_LINE, ACK_LINE]);
      expect(h.events).toEqual([`response ${status}`]);
      expect(tx.state).toBe(TransactionState.Completed);
    });

    it('no timeout in Proceeding (Timer B only applies in Calling)', () => {
      const { h, tx } = proceeding(false);
      vi.advanceTimersByTime(600_000);
      expect(h.events).toEqual([]);
      expect(tx.state).toBe(TransactionState.Proceeding);
    });

    it('UDP transport error is ignored (nothing outstanding)', () => {
      const { h, tx } = proceeding(false);
      tx.onTransportError(new Error('ECONNREFUSED'));
      expect(h.events).toEqual([]);
      expect(tx.state).toBe(TransactionState.Proceeding);
    });

    it('TCP connection lost: still Proceeding, TU not told; a final response that comes later completes it (18.2.2)', () => {
      const { h, tx } = proceeding(true);
      tx.onTransportError(new Error('ECONNRESET'));
      expect(h.events).toEqual([]);
      expect(tx.state).toBe(TransactionState.Proceeding);
      tx.receiveResponse(response(487, 'INVITE'));
      expect(h.events).toEqual(['response 487']);
      expect(h.sent.at(-1)).toBe(ACK_LINE);
      expect(tx.state).toBe(TransactionState.Terminated);
    });
  });

  describe('Completed', () => {
    it('UDP: retransmitted final -> ACK again, not passed to TU; 1xx/2xx ignored; Timer D = 32 s', () => {
      const { h, tx } = setup(false);
      tx.receiveResponse(response(486, 'INVITE'));
      tx.receiveResponse(response(486, 'INVITE'));
      tx.receiveResponse(response(486, 'INVITE'));
      tx.receiveResponse(response(180, 'INVITE'));
      tx.receiveResponse(response(200, 'INVITE'));
      expect(h.sent).toEqual([INVITE_LINE, ACK_LINE, ACK_LINE, ACK_LINE]);
      expect(h.events).toEqual(['response 486']);
      vi.advanceTimersByTime(31_999);
      expect(tx.state).toBe(TransactionState.Completed);
      expect(h.terminated).toBe(0);
      vi.advanceTimersByTime(1);
      expect(tx.state).toBe(TransactionState.Terminated);
      expect(h.terminated).toBe(1);
      // No retransmission of the INVITE happened while Completed.
      expect(h.sent.filter((l) => l === INVITE_LINE)).toHaveLength(1);
    });

    it('TCP: Timer D is zero: Terminated at once after the ACK', () => {
      const { h, tx } = setup(true);
      tx.receiveResponse(response(603, 'INVITE'));
      expect(h.sent).toEqual([INVITE_LINE, ACK_LINE]);
      expect(h.events).toEqual(['response 603']);
      expect(tx.state).toBe(TransactionState.Terminated);
      expect(h.terminated).toBe(1);
      expect(vi.getTimerCount()).toBe(0);
    });

    it('transport error -> Terminated without telling the TU', () => {
      const { h, tx } = setup(false);
      tx.receiveResponse(response(486, 'INVITE'));
      tx.onTransportError(new Error('ECONNREFUSED'));
      expect(h.events).toEqual(['response 486']);
      expect(tx.state).toBe(TransactionState.Terminated);
      expect(vi.getTimerCount()).toBe(0);
    });
  });

  describe('Terminated', () => {
    it('ignores everything and leaves no timers', () => {
      const { h, tx } = setup(false);
      tx.receiveResponse(response(200, 'INVITE'));
      tx.receiveResponse(response(200, 'INVITE'));
      tx.receiveResponse(response(486, 'INVITE'));
      tx.onTransportError(new Error('x'));
      tx.dispose();
      expect(h.events).toEqual(['response 200']);
      expect(h.terminated).toBe(1);
      expect(vi.getTimerCount()).toBe(0);
    });

    it('dispose() stops the timers of a Calling transaction silently', () => {
      const { h, tx } = setup(false);
      tx.dispose();
      expect(tx.state).toBe(TransactionState.Terminated);
      expect(vi.getTimerCount()).toBe(0);
      vi.advanceTimersByTime(100_000);
      expect(h.sent).toEqual([INVITE_LINE]);
      expect(h.events).toEqual([]);
    });
  });
});

describe('memory of a finished INVITE transaction', () => {
  it('lets go of its TU (the whole call) once Completed: the call can be collected while Timer D still runs', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const h = harness('INVITE', false);
    let seen = 0;
    // The TU and the request only reachable through the transaction (and the WeakRefs).
    const make = (): { tx: InviteClientTransaction; user: WeakRef<object>; request: WeakRef<object> } => {
      const user = { receiveResponse: () => seen++, onRequestTimeout: () => undefined, onTransportError: () => undefined, call: new Array(10_000).fill(0) };
      const request = request0('INVITE');
      const tx = new InviteClientTransaction({ ...h.options, user, request });
      tx.start();
      tx.receiveResponse(response(487, 'INVITE'));
      return { tx, user: new WeakRef(user), request: new WeakRef(request) };
    };
    const { tx, user, request } = make();
    expect(seen).toBe(1);
    await new Promise((r) => setTimeout(r, 0));
    gc();
    expect(tx.state).toBe(TransactionState.Completed);
    expect(user.deref()).toBeUndefined();
    expect(request.deref()).toBeUndefined();
    // It still absorbs a retransmitted 487 with its ACK, and passes nothing up.
    const before = h.sent.length;
    tx.receiveResponse(response(487, 'INVITE'));
    expect(h.sent.slice(before)).toEqual([ACK_LINE]);
    expect(seen).toBe(1);
    tx.dispose();
  });
});
