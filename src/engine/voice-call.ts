import type { Logger } from 'pino';
import type { TrunkConfig } from '../config/schema.js';
import type { Announcement, MediaPlayer, MediaSession } from '../media/media-player.js';
import type { NegotiatedMedia } from '../media/sdp.js';
import type { CallFailureReason, CallOriginator, OutboundCall } from '../sip/call-originator.js';
import { onAbort } from './abort-fanout.js';
import type { ShutdownSignals } from './flash-call.js';
import { newCallId } from '../sip/util.js';

/** How a voice-OTP call ended (design.md "Voice OTP, precisely"). */
export type VoiceOutcome =
  /** Answered, the whole announcement played, then our BYE. */
  | 'played'
  /** Answered, then the far end hung up during the announcement (playback stopped at once). */
  | 'remote_hangup'
  /** No 200 within answerTimeoutMs: CANCELled. */
  | 'no_answer'
  /**
   * Answered, but the callee could not be played the announcement: the SDP answer had nothing we can
   * send to (no G.711, no address), or the media backend failed mid-way (a playback error, FreeSWITCH's
   * control connection lost): BYE at once.
   */
  | 'media_failed'
  /** No RTP port free (or the media backend failed) before dialling: never called. */
  | 'no_media_resources'
  /** The worker's shutdown grace ran out: playback stopped and BYE sent, or the unanswered call CANCELled. */
  | 'shutdown'
  | CallFailureReason;

export interface VoiceResult {
  outcome: VoiceOutcome;
  callId: string;
  /** True once the call was answered with usable media (the `delivered` moment). */
  answered: boolean;
  /** True once any provisional response above 100 arrived (the far end took the call; route-advance.ts). */
  early: boolean;
  sipStatus?: number;
  phrase?: string;
  /** The Q.850 cause of a failed call's final response (Reason header), when it had one. */
  q850Cause?: number;
  /** The call failed on this side (CallFailure.local): nothing to say of the trunk. */
  local?: true;
  /** Negotiated codec, once answered. */
  codec?: string;
  /** RTP packets sent. */
  packets?: number;
  /** INVITE → 200, ms. */
  answerDelayMs?: number;
}

export interface VoiceCallParams {
  to: string;
  /** Caller ID presented (E.164). */
  from: string;
  trunk: TrunkConfig;
  announcement: Announcement;
  answerTimeoutMs: number;
  /** Upper bound on waiting for the INVITE to end once CANCEL is due (covers Timer B). */
  settleMs: number;
  logger: Logger;
  /** Called once, when the far end answered with usable media, before playback starts. */
  onAnswered?(callId: string, media: NegotiatedMedia): void;
  /** Worker shutdown: prompts in progress play on (`draining`) until the grace is nearly over (`expiring`): then BYE / CANCEL. */
  shutdown?: ShutdownSignals;
}

/**
 * The voice-OTP policy, written once against CallOriginator and MediaPlayer:
 * INVITE with our SDP offer; early media (18x with SDP) is ignored; a 200
 * within answerTimeoutMs starts the announcement in the negotiated codec,
 * followed by our BYE; no 200 in time → CANCEL (no_answer); a far-end BYE
 * stops playback at once.
 */
export async function placeVoiceCall(originator: CallOriginator, player: MediaPlayer, p: VoiceCallParams): Promise<VoiceResult> {
  // The Call-ID is chosen here so that the media side's lines (hold, a moved stream, playback errors) name it too.
  const callId = newCallId();
  const log = p.logger.child({ call_id: callId });
  let session: MediaSession;
  try {
    session = await player.createSession(log);
  } catch (err) {
    p.logger.error({ err: (err as Error).message }, 'no media session for the voice call');
    return { outcome: 'no_media_resources', callId: '', answered: false, early: false, phrase: (err as Error).message };
  }
  try {
    return await new Promise<VoiceResult>((resolve) => {
      const started = performance.now();
      let answered = false;
      let early = false;
      let noAnswer = false;
      let remoteHangup = false;
      let stopping = false;
      let settled = false;
      let codec: string | undefined;
      let answerDelayMs: number | undefined;
      const timers: NodeJS.Timeout[] = [];
      let call: OutboundCall | undefined;
      let unlistenExpiring = (): void => undefined;

      const finish = (r: Omit<VoiceResult, 'callId' | 'answered' | 'early' | 'codec' | 'answerDelayMs'>): void => {
        if (settled) return;
        settled = true;
        timers.forEach(clearTimeout);
        unlistenExpiring();
        resolve({
          ...r,
          callId: call?.callId ?? '',
          answered,
          early,
          ...(codec !== undefined ? { codec } : {}),
          ...(answerDelayMs !== undefined ? { answerDelayMs } : {}),
        });
      };

      const playThenHangup = async (): Promise<void> => {
        let failure: string | undefined;
        const played = await session.play(p.announcement).catch((err: Error) => {
          log.error({ err: err.message }, 'playback failed');
          failure = err.message;
          return { completed: false, packets: 0 };
        });
        if (remoteHangup) return finish({ outcome: 'remote_hangup', sipStatus: 200, packets: played.packets });
        // Our BYE; the call is over for the user whether or not the BYE transaction succeeds.
        await call?.hangup().catch(() => undefined);
        if (remoteHangup) return finish({ outcome: 'remote_hangup', sipStatus: 200, packets: played.packets });
        if (played.completed) return finish({ outcome: 'played', sipStatus: 200, packets: played.packets });
        if (stopping) return finish({ outcome: 'shutdown', sipStatus: 200, packets: played.packets });
        // Neither stopped by us nor by the callee: the media side gave up (FreeSWITCH playback error, its connection lost).
        finish({ outcome: 'media_failed', sipStatus: 200, packets: played.packets, phrase: failure ?? 'the announcement ended before it was complete' });
      };

      call = originator.originate(
        { to: p.to, from: p.from, trunk: p.trunk, sdp: session.offer, logger: p.logger, callId },
        {
          // 18x (with or without early media) changes nothing but this: we wait for the 200.
          onProvisional() {
            early = true;
          },
          onAnswered(sdp, crossedCancel) {
            if (crossedCancel || noAnswer) {
              // The 200 lost the race with our no-answer CANCEL: nothing was heard. With crossedCancel the backend BYEs.
              if (!crossedCancel) void call?.hangup().catch(() => undefined);
              return finish({ outcome: 'no_answer', sipStatus: 200 });
            }
            answerDelayMs = Math.round(performance.now() - started);
            let media: NegotiatedMedia;
            try {
              media = session.accept(sdp ?? '');
            } catch (err) {
              log.warn({ err: (err as Error).message }, 'unusable SDP answer; hanging up');
              void call
                ?.hangup()
                .catch(() => undefined)
                .finally(() => finish({ outcome: 'media_failed', sipStatus: 200, phrase: (err as Error).message }));
              return;
            }
            answered = true;
            codec = media.codec;
            clearTimeout(timers[0]);
            p.onAnswered?.(call?.callId ?? '', media);
            void playThenHangup();
          },
          // A re-INVITE's offer (media moved, hold): the media session answers it and follows it (a throw or a
          // rejection: 488, the backend's answerToOffer); a session without reoffer leaves the backend our SDP.
          ...(session.reoffer ? { onOffer: (sdp: string) => session.reoffer!(sdp) } : {}),
          ...(session.offerAgain && session.acceptAgain
            ? { onOfferWanted: () => session.offerAgain!(), onAnswer: (sdp: string) => session.acceptAgain!(sdp) }
            : {}),
          onRemoteHangup() {
            remoteHangup = true;
            session.stop();
          },
          onCancelled(finalStatus) {
            finish({ outcome: stopping ? 'shutdown' : 'no_answer', sipStatus: finalStatus });
          },
          onFailed(f) {
            if (f.early) early = true;
            // After our no-answer CANCEL, a final response other than 487 (or none) still means nobody answered,
            // unless nothing ever came back at all (Timer B: `timeout`) or the network failed.
            // A call that never reached the network (Timer B, transport error) says so even while stopping: the
            // request that ended meanwhile still gets its refund (voice-processor.ts).
            const outcome =
              f.reason === 'timeout' || f.reason === 'unreachable' ? f.reason : stopping ? 'shutdown' : noAnswer ? 'no_answer' : f.reason;
            finish({ outcome, sipStatus: f.status, phrase: f.phrase, ...(f.q850 ? { q850Cause: f.q850.cause } : {}), ...(f.local ? { local: true } : {}) });
          },
        },
      );
      timers.push(
        setTimeout(() => {
          if (answered) return;
          noAnswer = true;
          call?.cancel();
          timers.push(setTimeout(() => finish({ outcome: 'no_answer' }), p.settleMs));
        }, p.answerTimeoutMs),
      );
      function onExpiring(): void {
        stopping = true;
        // Answered: stop the prompt, playThenHangup sends the BYE. Not answered: CANCEL.
        if (answered) session.stop();
        else call?.cancel();
      }
      if (p.shutdown && !settled) unlistenExpiring = onAbort(p.shutdown.expiring, onExpiring);
    });
  } finally {
    await session.close();
  }
}
