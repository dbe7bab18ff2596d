import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { TrunkConfig } from '../../../src/config/schema.js';
import { placeFlashCall, type FlashResult } from '../../../src/engine/flash-call.js';
import type { CallDelegate, CallOriginator, OutboundCall, PingResult } from '../../../src/sip/call-originator.js';

/** A scripted originator: the test plays the far end through the captured delegate. */
class ScriptedOriginator implements CallOriginator {
  delegate!: CallDelegate;
  cancels = 0;
  hangups = 0;
  async start() {}
  async stop() {}
  /** Not used by the call policies. */
  async ping(): Promise<PingResult> {
    return { outcome: 'not_sent', callId: '' };
  }
  originate(_req: unknown, delegate: CallDelegate): OutboundCall {
    this.delegate = delegate;
    return {
      callId: 'call-1',
      cancel: () => void this.cancels++,
      hangup: async () => void this.hangups++,
    };
  }
}

const trunk = { name: 't', uri: 'sip:127.0.0.1', cps: 10, ringOn183: false, dummySdp: false, headers: {} } as TrunkConfig;

describe('placeFlashCall (the flash policy)', () => {
  let sip: ScriptedOriginator;
  let rings: number[];
  let result: Promise<FlashResult>;
  const start = (t: TrunkConfig = trunk) => {
    result = placeFlashCall(sip, {
      to: '+447700900000',
      cli: '+441908730000',
      trunk: t,
      ringMs: 2000,
      ringingTimeoutMs: 10_000,
      settleMs: 5000,
      logger: pino({ level: 'silent' }),
      onRinging: (_id, status) => rings.push(status),
    });
  };
  beforeEach(() => {
    vi.useFakeTimers();
    sip = new ScriptedOriginator();
    rings = [];
  });
  afterEach(() => vi.useRealTimers());

  it('first 180 → delivered → hold ringMs → CANCEL → 487 is cancelled (success)', async () => {
    start();
    sip.delegate.onProvisional?.(180, 'Ringing', undefined);
    expect(rings).toEqual([180]);
    vi.advanceTimersByTime(1999);
    expect(sip.cancels).toBe(0);
    vi.advanceTimersByTime(1);
    expect(sip.cancels).toBe(1);
    sip.delegate.onCancelled?.(487);
    await expect(result).resolves.toMatchObject({ outcome: 'cancelled', rang: true, sipStatus: 487 });
  });

  it('rang, CANCELled, and no final response ever came: cancelled without a made-up SIP status', async () => {
    start();
    sip.delegate.onProvisional?.(180, 'Ringing', undefined);
    vi.advanceTimersByTime(2000);
    expect(sip.cancels).toBe(1);
    sip.delegate.onCancelled?.(undefined);
    const r = await result;
    expect(r).toMatchObject({ outcome: 'cancelled', rang: true });
    expect(r.sipStatus).toBeUndefined();
  });

  it('183 does not ring unless the trunk says so', async () => {
    start();
    sip.delegate.onProvisional?.(183, 'Session Progress', undefined);
    expect(rings).toEqual([]);
    sip.delegate.onProvisional?.(180, 'Ringing', undefined);
    expect(rings).toEqual([180]);
    start({ ...trunk, ringOn183: true });
    sip.delegate.onProvisional?.(183, 'Session Progress', undefined);
    expect(rings).toEqual([180, 183]);
  });

  it('no 18x within ringingTimeoutMs → CANCEL → no_ringing', async () => {
    start();
    sip.delegate.onProvisional?.(100, 'Trying', undefined);
    vi.advanceTimersByTime(10_000);
    expect(sip.cancels).toBe(1);
    sip.delegate.onCancelled?.(487);
    await expect(result).resolves.toMatchObject({ outcome: 'no_ringing', rang: false });
  });

  it('no response at all → the stack\'s timeout is reported, even after the ringing timeout asked for a CANCEL', async () => {
    start();
    sip.delegate.onFailed?.({ reason: 'timeout' });
    await expect(result).resolves.toMatchObject({ outcome: 'timeout', rang: false });
    start();
    vi.advanceTimersByTime(10_000);
    expect(sip.cancels).toBe(1);
    sip.delegate.onFailed?.({ reason: 'timeout' });
    await expect(result).resolves.toMatchObject({ outcome: 'timeout', rang: false });
  });

  it('a 200 before the CANCEL is answered and hung up; one that crossed it is answered, BYE left to the stack', async () => {
    start();
    sip.delegate.onProvisional?.(180, 'Ringing', undefined);
    sip.delegate.onAnswered?.(undefined, false);
    await expect(result).resolves.toMatchObject({ outcome: 'answered' });
    expect(sip.hangups).toBe(1);
    start();
    sip.delegate.onProvisional?.(180, 'Ringing', undefined);
    vi.advanceTimersByTime(2000);
    sip.delegate.onAnswered?.(undefined, true);
    await expect(result).resolves.toMatchObject({ outcome: 'answered' });
    expect(sip.hangups).toBe(1);
  });

  it.each([
    ['busy', 486],
    ['declined', 603],
    ['not_found', 404],
    ['unavailable', 480],
    ['redirected', 302],
    ['rejected', 503],
  ] as const)('a %s final before ringing fails with that reason', async (reason, status) => {
    start();
    sip.delegate.onFailed?.({ reason, status, phrase: 'x' });
    await expect(result).resolves.toMatchObject({ outcome: reason, sipStatus: status, rang: false });
  });

  it('a final after ringing still counts as shown (cancelled), with its status', async () => {
    start();
    sip.delegate.onProvisional?.(180, 'Ringing', undefined);
    sip.delegate.onFailed?.({ reason: 'declined', status: 603, phrase: 'Decline' });
    await expect(result).resolves.toMatchObject({ outcome: 'cancelled', sipStatus: 603, rang: true });
  });
});
