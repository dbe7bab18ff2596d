import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { pino } from 'pino';
import type { TrunkConfig } from '../../../src/config/schema.js';
import { trunkVerdict, type TrunkVerdict } from '../../../src/engine/trunk-pacer.js';
import { pingIntervalMs, TrunkPinger } from '../../../src/engine/trunk-pinger.js';
import type { PingRequest, PingResult } from '../../../src/sip/call-originator.js';

const trunk = (name: string, extra: Partial<TrunkConfig> = {}) =>
  ({ name, uri: 'sip:127.0.0.1', cps: 100, ringOn183: false, dummySdp: false, headers: {}, ...extra }) as TrunkConfig;

/** A backend whose pings end when the test says. */
class ScriptedPings {
  readonly sent: PingRequest[] = [];
  private readonly pending: ((r: PingResult) => void)[] = [];
  inFlight = 0;
  maxInFlight = 0;
  ping(request: PingRequest): Promise<PingResult> {
    this.sent.push(request);
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    return new Promise((resolve) =>
      this.pending.push((r) => {
        this.inFlight--;
        resolve(r);
      }),
    );
  }
  /** Ends the oldest ping in flight. */
  end(outcome: PingResult['outcome'], status?: number): void {
    this.pending.shift()?.({ outcome, callId: `c${this.sent.length}`, status });
  }
}

describe('TrunkPinger', () => {
  let sip: ScriptedPings;
  let verdicts: string[];
  let results: string[];
  let pinged: string[];
  const pinger = (trunks: TrunkConfig[], defaultIntervalMs: number) =>
    new TrunkPinger({
      originator: sip,
      pacer: {
        report: (t: TrunkConfig, v: TrunkVerdict) => void verdicts.push(`${t.name}:${v}`),
        setPinged: (t: TrunkConfig, on: boolean) => void (on && pinged.push(t.name)),
        verdictOf: (outcome: string, status?: number) => trunkVerdict(outcome, status),
      },
      trunks,
      defaultIntervalMs,
      maxTimeoutMs: 3200,
      onResult: (t, r) => void results.push(`${t}:${r}`),
      logger: pino({ level: 'silent' }),
    });
  beforeEach(() => {
    vi.useFakeTimers();
    sip = new ScriptedPings();
    verdicts = [];
    results = [];
    pinged = [];
  });
  afterEach(() => vi.useRealTimers());

  it("takes a trunk's own interval over the default; 0 is off", () => {
    expect(pingIntervalMs(trunk('a'), 0)).toBe(0);
    expect(pingIntervalMs(trunk('a'), 30_000)).toBe(30_000);
    expect(pingIntervalMs(trunk('a', { optionsPingMs: 0 }), 30_000)).toBe(0);
    expect(pingIntervalMs(trunk('a', { optionsPingMs: 500 }), 0)).toBe(500);
    const p = pinger([trunk('a'), trunk('b', { optionsPingMs: 0 }), trunk('c', { optionsPingMs: 500 })], 1000);
    expect(p.pingedTrunks).toEqual(['a', 'c']);
  });

  it('pings at start, then every interval, never two at a time; each waits at most the interval (and Timer F)', async () => {
    const p = pinger([trunk('a', { optionsPingMs: 1000 }), trunk('slow', { optionsPingMs: 10_000 })], 0);
    p.start();
    expect(pinged).toEqual(['a', 'slow']);
    await vi.advanceTimersByTimeAsync(0);
    expect(sip.sent.map((r) => [r.trunk.name, r.timeoutMs])).toEqual([
      ['a', 1000],
      ['slow', 3200],
    ]);
    // Neither answers for 5 s: no second ping goes meanwhile.
    await vi.advanceTimersByTimeAsync(5000);
    expect(sip.sent).toHaveLength(2);
    sip.end('timeout'); // a's, overdue: the next goes at once
    await vi.advanceTimersByTimeAsync(0);
    expect(sip.sent.map((r) => r.trunk.name)).toEqual(['a', 'slow', 'a']);
    sip.end('timeout'); // slow's
    sip.end('answered', 405); // a's second, right away: its next is due 1 s after it left (a 405 is an answer: up)
    await vi.advanceTimersByTimeAsync(999);
    expect(sip.sent).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(1);
    expect(sip.sent).toHaveLength(4);
    expect(sip.maxInFlight).toBe(2); // one per trunk
    expect(verdicts).toEqual(['a:failed', 'slow:failed', 'a:up']);
    expect(results).toEqual(['a:timeout', 'slow:timeout', 'a:answered']);
    p.stop();
  });

  it('a ping answered 503 (an SBC in maintenance: sip.trunkHealth.failureStatuses) fails like no answer', async () => {
    const p = pinger([trunk('a')], 1000);
    p.start();
    await vi.advanceTimersByTimeAsync(0);
    sip.end('answered', 503);
    await vi.advanceTimersByTimeAsync(1000);
    sip.end('answered', 200);
    await vi.advanceTimersByTimeAsync(0);
    expect(verdicts).toEqual(['a:failed', 'a:up']);
    expect(results).toEqual(['a:answered', 'a:answered']);
    p.stop();
  });

  it('a ping the backend did not send says nothing of the trunk; after stop() nothing is sent or reported', async () => {
    const p = pinger([trunk('a')], 1000);
    p.start();
    await vi.advanceTimersByTimeAsync(0);
    sip.end('not_sent');
    await vi.advanceTimersByTimeAsync(1000);
    expect(sip.sent).toHaveLength(2);
    expect(verdicts).toEqual([]);
    expect(results).toEqual([]);
    p.stop();
    sip.end('unreachable'); // in flight at stop(): dropped
    await vi.advanceTimersByTimeAsync(5000);
    expect(sip.sent).toHaveLength(2);
    expect(verdicts).toEqual([]);
  });
});
