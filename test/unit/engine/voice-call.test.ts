import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { TrunkConfig } from '../../../src/config/schema.js';
import { placeVoiceCall, type VoiceResult } from '../../../src/engine/voice-call.js';
import type { Announcement, MediaPlayer, MediaSession, PlayResult } from '../../../src/media/media-player.js';
import { codeAnnouncement } from '../../../src/media/prompts.js';
import { parseAnswer } from '../../../src/media/sdp.js';
import type { CallDelegate, CallOriginator, OriginateRequest, OutboundCall, PingResult } from '../../../src/sip/call-originator.js';

class ScriptedOriginator implements CallOriginator {
  delegate!: CallDelegate;
  request!: OriginateRequest;
  cancels = 0;
  hangups = 0;
  async start() {}
  async stop() {}
  /** Not used by the call policies. */
  async ping(): Promise<PingResult> {
    return { outcome: 'not_sent', callId: '' };
  }
  originate(req: OriginateRequest, delegate: CallDelegate): OutboundCall {
    this.request = req;
    this.delegate = delegate;
    return { callId: 'call-1', cancel: () => void this.cancels++, hangup: async () => void this.hangups++ };
  }
}

/** A media player whose playback the test finishes by hand. */
class FakePlayer implements MediaPlayer {
  played: Announcement[] = [];
  stops = 0;
  closes = 0;
  finishPlay: ((r: PlayResult) => void) | undefined;
  async createSession(): Promise<MediaSession> {
    return {
      offer: 'v=0 (offer)',
      accept: (sdp) => parseAnswer(sdp),
      play: (a) => {
        this.played.push(a);
        return new Promise<PlayResult>((resolve) => (this.finishPlay = resolve));
      },
      stop: () => {
        this.stops++;
        this.finishPlay?.({ completed: false, packets: 7 });
      },
      close: async () => void this.closes++,
    };
  }
  async stop() {}
}

const trunk = { name: 't', uri: 'sip:127.0.0.1', cps: 10, ringOn183: false, dummySdp: false, headers: {} } as TrunkConfig;
const ANSWER = 'v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n';

describe('placeVoiceCall (the voice policy)', () => {
  let sip: ScriptedOriginator;
  let player: FakePlayer;
  let answered: string[];
  let result: Promise<VoiceResult>;
  const start = async () => {
    result = placeVoiceCall(sip, player, {
      to: '+447700900000',
      from: '+441908730000',
      trunk,
      announcement: codeAnnouncement('4829', 'en'),
      answerTimeoutMs: 30_000,
      settleMs: 5000,
      logger: pino({ level: 'silent' }),
      onAnswered: (_id, media) => answered.push(media.codec),
    });
    await vi.advanceTimersByTimeAsync(0); // createSession
  };
  beforeEach(() => {
    vi.useFakeTimers();
    sip = new ScriptedOriginator();
    player = new FakePlayer();
    answered = [];
  });
  afterEach(() => vi.useRealTimers());

  it('sends the offer; early media changes nothing; 200 → delivered, play, then BYE', async () => {
    await start();
    expect(sip.request.sdp).toBe('v=0 (offer)');
    sip.delegate.onProvisional?.(183, 'Session Progress', ANSWER);
    expect(player.played).toHaveLength(0);
    sip.delegate.onAnswered?.(ANSWER, false);
    expect(answered).toEqual(['PCMA']);
    expect(player.played).toHaveLength(1);
    expect(sip.hangups).toBe(0);
    player.finishPlay!({ completed: true, packets: 500 });
    await expect(result).resolves.toMatchObject({ outcome: 'played', answered: true, codec: 'PCMA', packets: 500 });
    expect(sip.hangups).toBe(1);
    expect(player.closes).toBe(1);
  });

  it('no 200 within answerTimeoutMs → CANCEL → no_answer', async () => {
    await start();
    sip.delegate.onProvisional?.(180, 'Ringing', undefined);
    await vi.advanceTimersByTimeAsync(29_999);
    expect(sip.cancels).toBe(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(sip.cancels).toBe(1);
    sip.delegate.onCancelled?.(487);
    await expect(result).resolves.toMatchObject({ outcome: 'no_answer', answered: false, sipStatus: 487 });
    expect(player.closes).toBe(1);
  });

  it('a 200 that crosses the no-answer CANCEL plays nothing', async () => {
    await start();
    await vi.advanceTimersByTimeAsync(30_000);
    sip.delegate.onAnswered?.(ANSWER, true);
    await expect(result).resolves.toMatchObject({ outcome: 'no_answer', answered: false });
    expect(player.played).toHaveLength(0);
  });

  it('far-end BYE stops playback at once; no BYE of ours', async () => {
    await start();
    sip.delegate.onAnswered?.(ANSWER, false);
    sip.delegate.onRemoteHangup?.();
    await expect(result).resolves.toMatchObject({ outcome: 'remote_hangup', answered: true, packets: 7 });
    expect(player.stops).toBe(1);
    expect(sip.hangups).toBe(0);
  });

  it('busy maps as for flash calls', async () => {
    await start();
    sip.delegate.onFailed?.({ reason: 'busy', status: 486, phrase: 'Busy Here' });
    await expect(result).resolves.toMatchObject({ outcome: 'busy', sipStatus: 486, answered: false });
  });

  it('a playback the media side ends early (not stopped by us or the callee) is media_failed, not played; our BYE', async () => {
    await start();
    sip.delegate.onAnswered?.(ANSWER, false);
    player.finishPlay!({ completed: false, packets: 120 });
    await expect(result).resolves.toMatchObject({ outcome: 'media_failed', answered: true, packets: 120, sipStatus: 200 });
    expect(sip.hangups).toBe(1);
    expect(player.closes).toBe(1);
  });

  it('an answer without a usable codec is hung up: media_failed', async () => {
    await start();
    sip.delegate.onAnswered?.(ANSWER.replace('RTP/AVP 8', 'RTP/AVP 18'), false);
    await expect(result).resolves.toMatchObject({ outcome: 'media_failed', answered: false });
    expect(sip.hangups).toBe(1);
    expect(player.played).toHaveLength(0);
  });
});
