import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { systemClock } from '../../../src/sip/clock.js';
import { hdr, type ParsedResponse } from '../../../src/sip/message.js';
import { SrvTargets } from '../../../src/sip/sip-locator.js';
import { onNewBranch, retryAfterMs, TargetFailover, type FailoverEvent, type FailoverHost } from '../../../src/sip/srv-failover.js';
import type { Destination } from '../../../src/sip/transport.js';
import { request, TIMERS } from './tx-helpers.js';

const at = (port: number): Destination => ({ protocol: 'udp', host: '127.0.0.1', port, serverName: 'trunk.test' });
const TRUNK = { name: 'carrier', uri: 'sip:trunk.test', cps: 10, ringOn183: false, dummySdp: false, headers: {} };

/** A request at 5001 with targets 5002 and 5003 left, and what it did. */
function setup(options: { targetTimeoutMs?: number; canMove?: () => boolean; lookup?: (port: number) => Promise<Destination> } = {}) {
  const seen = { resent: [] as number[], gaveUp: 0, failed: [] as [number, number | undefined][], events: [] as FailoverEvent[] };
  const host: FailoverHost = {
    clock: systemClock,
    timers: TIMERS,
    targetTimeoutMs: options.targetTimeoutMs ?? 0,
    destinationFailed: (d, forMs) => seen.failed.push([d.port, forMs]),
    failedOver: (_trunk, _to, event) => seen.events.push(event),
  };
  const lookup = options.lookup ?? (async (port: number) => at(port));
  const rest = new SrvTargets([5002, 5003].map((port) => ({ name: `t${port}`, port, priority: port, weight: 0 })), (t) => lookup(t.port), () => false);
  const failover: TargetFailover = new TargetFailover({ destination: at(5001), rest }, host, TRUNK, 'INVITE', pino({ level: 'silent' }), {
    canMove: options.canMove ?? (() => true),
    resend: () => {
      seen.resent.push(failover.destination.port);
      failover.sent();
    },
    giveUp: () => seen.gaveUp++,
  });
  failover.sent();
  return { failover, seen };
}

describe('RFC 3263 4.3 failover of one request', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('a failure moves the request to each target left in turn, marking each; the last failure stands', async () => {
    const { failover, seen } = setup();
    failover.failed('unreachable', 'ECONNREFUSED');
    await vi.runAllTimersAsync();
    failover.failed('service_unavailable', 'Service Unavailable', 120_000);
    await vi.runAllTimersAsync();
    expect(seen.resent).toEqual([5002, 5003]);
    failover.failed('timeout', 'Timer B expired');
    await vi.runAllTimersAsync();
    expect(seen.gaveUp).toBe(1);
    expect(seen.failed).toEqual([[5001, undefined], [5002, 120_000], [5003, undefined]]);
    expect(seen.events).toEqual([
      { trunk: 'carrier', method: 'INVITE', reason: 'unreachable' },
      { trunk: 'carrier', method: 'INVITE', reason: 'service_unavailable' },
    ]);
  });

  it('does not move once its user gave up (a CANCEL asked for) or 64*T1 after the first sending', async () => {
    const cancelled = setup({ canMove: () => false });
    cancelled.failover.failed('unreachable', 'ECONNREFUSED');
    expect(cancelled.seen).toMatchObject({ resent: [], gaveUp: 1 });
    const late = setup();
    vi.advanceTimersByTime(64 * TIMERS.t1Ms);
    late.failover.failed('unreachable', 'ECONNREFUSED');
    expect(late.seen).toMatchObject({ resent: [], gaveUp: 1 });
  });

  it('a target silent for targetTimeoutMs is left for the next; a response before then keeps the request there; the last target keeps Timer B', async () => {
    const { failover, seen } = setup({ targetTimeoutMs: 1000 });
    await vi.advanceTimersByTimeAsync(999);
    expect(seen.resent).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(seen.resent).toEqual([5002]);
    expect(seen.events).toEqual([{ trunk: 'carrier', method: 'INVITE', reason: 'timeout' }]);
    failover.heard();
    await vi.advanceTimersByTimeAsync(5000);
    expect(seen.resent).toEqual([5002]);
    // At the last target there is no timer of its own: only the transaction's Timer B ends the request there.
    failover.failed('service_unavailable', 'Service Unavailable');
    await vi.runAllTimersAsync();
    expect(seen.resent).toEqual([5002, 5003]);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(seen.resent).toEqual([5002, 5003]);
    expect(seen.gaveUp).toBe(0);
  });
});

describe('RFC 3263 4.3 failover: a next target looked up but not used', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('is kept for the next failure: a response during a silent target\'s lookup does not make the request pass a target over', async () => {
    let answer: (d: Destination) => void = () => undefined;
    const { failover, seen } = setup({
      targetTimeoutMs: 1000,
      lookup: (port) => (port === 5002 ? new Promise<Destination>((resolve) => (answer = resolve)) : Promise.resolve(at(port))),
    });
    await vi.advanceTimersByTimeAsync(1000);
    // The target answers while its successor's address is looked up: the request stays.
    failover.heard();
    answer(at(5002));
    await vi.advanceTimersByTimeAsync(1);
    expect(seen.resent).toEqual([]);
    failover.failed('service_unavailable', 'Service Unavailable');
    await vi.advanceTimersByTimeAsync(1);
    expect(seen.resent).toEqual([5002]);
  });
});

describe('the request sent again', () => {
  it('is the same request but for the top Via branch', () => {
    const original = request('INVITE');
    original.headers.push(hdr('Via', 'SIP/2.0/UDP proxy.example;branch=z9hG4bKlower'));
    const { request: again, branch } = onNewBranch(original, (b) => `SIP/2.0/UDP 127.0.0.1:5070;branch=${b};rport`);
    expect(branch).toMatch(/^z9hG4bK/);
    expect(again.headers.map((h) => h.value)).toEqual(
      original.headers.map((h, i) => (i === 0 ? `SIP/2.0/UDP 127.0.0.1:5070;branch=${branch};rport` : h.value)),
    );
    expect(again.uri).toBe(original.uri);
  });

  it("reads a 503's Retry-After as delta-seconds (comment and parameters ignored), at most an hour", () => {
    const with503 = (value?: string): ParsedResponse =>
      ({ kind: 'response', status: 503, reason: 'Service Unavailable', headers: value === undefined ? [] : [hdr('Retry-After', value)], body: undefined }) as unknown as ParsedResponse;
    expect(retryAfterMs(with503('120 (maintenance);duration=60'))).toBe(120_000);
    expect(retryAfterMs(with503('86400'))).toBe(3_600_000);
    expect(retryAfterMs(with503())).toBeUndefined();
    expect(retryAfterMs(with503('soon'))).toBeUndefined();
  });
});