import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import type { Sealer } from '../crypto/sealer.js';
import type { EventPublisher } from '../events/event-publisher.js';
import type { MediaPlayer } from '../media/media-player.js';
import { codeAnnouncement, languageFor } from '../media/prompts.js';
import type { Metrics } from '../metrics/metrics.js';
import type { RangeSelector } from '../numbers/range-selector.js';
import type { CallOriginator } from '../sip/call-originator.js';
import type { Keys } from '../store/keys.js';
import { callResume, markDialing, recordAttemptFields, watchUnlessEnded } from './attempt-state.js';
import { claimDelivery } from './delivery-claim.js';
import type { ShutdownSignals } from './flash-call.js';
import { failNoRoute, placeOnTrunks } from './route-advance.js';
import type { TrunkPacer } from './trunk-pacer.js';
import { placeVoiceCall, type VoiceResult } from './voice-call.js';

/** Outcomes that never reached the far end: the attempt is refunded. */
const NOT_ON_NETWORK = new Set(['unreachable', 'timeout', 'no_media_resources', 'shutdown']);

/**
 * Delivers one voice-OTP verification: loads the sealed record, calls the
 * number with an SDP offer, reads the code twice once answered, and reports
 * every step to the events stream.
 */
export class VoiceProcessor {
  constructor(
    private readonly deps: {
      redis: Redis;
      keys: Keys;
      sealer: Sealer;
      config: Readonly<Config>;
      originator: CallOriginator;
      player: MediaPlayer;
      ranges: RangeSelector;
      trunks: TrunkPacer;
      events: EventPublisher;
      metrics: Metrics;
      logger: Logger;
      shutdown?: ShutdownSignals;
    },
  ) {}

  /** `jobId`: the delivery job's id, which names the send it is for (claimDelivery drops a job of another send). */
  async process(requestId: string, jobId?: string): Promise<VoiceResult | undefined> {
    const { redis, config, events } = this.deps;
    // Re-run after a crash: a call that was answered was delivered (its event is in the stream); any other may have left.
    // One that never got past its wait for a channel or CPS token (no dial mark of this job): never left, refunded.
    const claim = await claimDelivery(this.deps, { requestId, jobId }, 'voice', ['locale', 'answered_at', 'dial_job'], callResume(jobId, 'answered_at'));
    if (!claim) return undefined;
    const claimedAt = Date.now();
    const { key, base, log, to, code, country } = claim;
    // No trunk carries this number (sip.trunks[].prefixes, no default route).
    if (!this.deps.trunks.routes(to)) return failNoRoute(this.deps, base, log);
    const locale = claim.extra.locale ?? undefined;
    const language = languageFor(locale, country, this.deps.config.verification.languageByCountry);
    const from = this.callerId(country);
    const step = claim.base.step;
    // On the trunk's channel, under its CPS; placed again on the next trunk when one refuses it before it rang.
    const placed = await placeOnTrunks(this.deps, 'voice', { to }, log, async (trunk) => {
      await this.deps.trunks.take(trunk);
      // Canceled, verified, expired, or its workflow step timed out while the phone rings or the prompt plays:
      // the call is CANCELled, or the prompt stopped and BYE sent, through the same path as a worker shutdown.
      // Canceled, expired or its step over while it waited for a channel or the trunk's CPS token (a backlog): never
      // dialled, refunded.
      const watch = await watchUnlessEnded(this.deps, key, base, trunk, claimedAt, log);
      if (!watch) return undefined;
      // From here the call may leave (a re-run after a crash before it: refunded, see claimDelivery).
      markDialing(redis, key, step, jobId, log);
      this.deps.metrics.callStarted('voice', trunk.name);
      // A call that throws before its report() must not keep a down trunk's probe slot (trunk-pacer.ts).
      const result = await this.deps.trunks.guarded(trunk, placeVoiceCall(this.deps.originator, this.deps.player, {
        to,
        from,
        trunk,
        announcement: codeAnnouncement(code, language),
        answerTimeoutMs: trunk.answerTimeoutMs ?? config.voice.answerTimeoutMs,
        settleMs: 64 * config.sip.timers.t1Ms + 1000,
        logger: log,
        shutdown: watch.callSignals(this.deps.shutdown),
        onAnswered: (callId, media) => {
          // Looked at once more on answer: the prompt is stopped before the code if the request ended meanwhile.
          void watch
            .check()
            .then(async (current) => {
              if (!current) return;
              await events.publish({ ...base, status: 'delivered', detail: { sip_status: 200, call_id: callId, trunk: trunk.name, codec: media.codec, language } });
              await recordAttemptFields(redis, key, step, { answered_at: String(Date.now()) });
            })
            .catch((err: Error) => log.error({ err: err.message }, 'could not publish delivered event'));
        },
      })).finally(() => watch.stop());
      return { result, watch };
    });
    if (!placed) return undefined;
    const { trunk, result, watch } = placed;
    // Ended because the request (or its step) did: no failure to report (a call that never reached the network is
    // refunded below).
    const outcome = watch.ended ? 'request_ended' : result.outcome;
    const detail = {
      outcome,
      call_id: result.callId,
      trunk: trunk.name,
      language,
      ...(result.sipStatus !== undefined ? { sip_status: result.sipStatus } : {}),
      ...(result.q850Cause !== undefined ? { q850_cause: result.q850Cause } : {}),
      ...(result.codec !== undefined ? { codec: result.codec } : {}),
      ...(result.packets !== undefined ? { rtp_packets: result.packets } : {}),
      ...(result.answerDelayMs !== undefined ? { answer_ms: result.answerDelayMs } : {}),
    };
    log.info({ ...detail }, 'voice call finished');
    this.deps.metrics.callEnded('voice', trunk.name, outcome);
    this.deps.trunks.report(trunk, this.deps.trunks.verdictOf(result.outcome, result.sipStatus, result.local));
    await recordAttemptFields(redis, key, step, { outcome, ...(result.sipStatus !== undefined ? { final_sip_status: String(result.sipStatus) } : {}) });
    if (!result.answered && !watch.ended) {
      await events.publish({
        ...base,
        status: 'failed',
        detail: { ...detail, reason: result.outcome, ...(NOT_ON_NETWORK.has(result.outcome) ? { refund: true } : {}) },
      });
    } else if (!result.answered && (result.outcome === 'timeout' || result.outcome === 'unreachable')) {
      // The request (or its step) ended while the INVITE went unanswered, and the call never reached the network:
      // refunded all the same (the status consumer refunds once, whatever the status is by now; as for flash calls).
      await events.publish({ ...base, status: 'failed', detail: { ...detail, reason: result.outcome, refund: true } });
    }
    return result;
  }

  /** The caller ID shown: `voice.callerId`, else the first number of a DID range (same country first). */
  private callerId(country: string): string {
    const configured = this.deps.config.voice.callerId;
    if (configured) return configured;
    const range = this.deps.ranges.candidates(country, undefined, 'voice')[0] ?? this.deps.config.numbers.ranges[0]!;
    return `${range.prefix}0000`;
  }
}
