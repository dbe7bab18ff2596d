import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Config, TrunkConfig } from '../config/schema.js';
import type { Sealer } from '../crypto/sealer.js';
import type { EventPublisher } from '../events/event-publisher.js';
import type { MediaPlayer } from '../media/media-player.js';
import { codeAnnouncement, languageFor } from '../media/prompts.js';
import type { Metrics } from '../metrics/metrics.js';
import type { RangeSelector } from '../numbers/range-selector.js';
import type { CallOriginator } from '../sip/call-originator.js';
import type { Keys } from '../store/keys.js';
import { TokenBucket } from './token-bucket.js';
import { placeVoiceCall, type VoiceResult } from './voice-call.js';

/** Outcomes that never reached the far end: the attempt is refunded. */
const NOT_ON_NETWORK = new Set(['unreachable', 'timeout', 'no_media_resources']);

/**
 * Delivers one voice-OTP verification: loads the sealed record, calls the
 * number with an SDP offer, reads the code twice once answered, and reports
 * every step to the events stream.
 */
export class VoiceProcessor {
  private readonly buckets = new Map<string, TokenBucket>();

  constructor(
    private readonly deps: {
      redis: Redis;
      keys: Keys;
      sealer: Sealer;
      config: Readonly<Config>;
      originator: CallOriginator;
      player: MediaPlayer;
      ranges: RangeSelector;
      events: EventPublisher;
      metrics: Metrics;
      logger: Logger;
    },
  ) {}

  async process(requestId: string): Promise<VoiceResult | undefined> {
    const { redis, keys, sealer, config, events } = this.deps;
    const key = keys.verification(requestId);
    const [status, accountId, phoneEnc, codeEnc, country, expiresAt, method, locale] = await redis.hmget(
      key,
      'status',
      'account_id',
      'phone_enc',
      'code_enc',
      'country',
      'expires_at',
      'method',
      'locale',
    );
    const log = this.deps.logger.child({ request_id: requestId });
    if (!status || !accountId || !phoneEnc || !codeEnc) {
      log.warn('voice job for a verification that no longer exists; dropped');
      return undefined;
    }
    if (method !== 'voice') {
      log.error({ method }, 'voice job for a verification of another method; dropped');
      return undefined;
    }
    if (status !== 'sent') {
      log.info({ status }, 'verification already past sent; not calling again');
      return undefined;
    }
    const base = { request_id: requestId, account_id: accountId, method: 'voice' as const };
    if (Date.now() >= Number(expiresAt)) {
      await events.publish({ ...base, status: 'failed', detail: { reason: 'expired_before_delivery', refund: true } });
      return undefined;
    }
    // Record the dial before the INVITE leaves: a re-run after a worker crash never calls twice.
    if ((await redis.hsetnx(key, 'dial_started', String(Date.now()))) === 0) {
      log.warn('a previous worker already dialled this verification (crash?); not dialling again');
      await events.publish({ ...base, status: 'failed', detail: { reason: 'interrupted' } });
      return undefined;
    }

    const to = sealer.open(phoneEnc, `phone:${requestId}`);
    const code = sealer.open(codeEnc, `code:${requestId}`);
    const language = languageFor(locale, country);
    const trunk = this.pickTrunk();
    const from = this.callerId(country ?? 'ZZ');
    await this.bucket(trunk).take();
    this.deps.metrics.callStarted('voice', trunk.name);
    const result = await placeVoiceCall(this.deps.originator, this.deps.player, {
      to,
      from,
      trunk,
      announcement: codeAnnouncement(code, language),
      answerTimeoutMs: config.voice.answerTimeoutMs,
      settleMs: 64 * config.sip.timers.t1Ms + 1000,
      logger: log,
      onAnswered: (callId, media) => {
        void events
          .publish({ ...base, status: 'delivered', detail: { sip_status: 200, call_id: callId, trunk: trunk.name, codec: media.codec, language } })
          .catch((err: Error) => log.error({ err: err.message }, 'could not publish delivered event'));
      },
    });
    const detail = {
      outcome: result.outcome,
      call_id: result.callId,
      trunk: trunk.name,
      language,
      ...(result.sipStatus !== undefined ? { sip_status: result.sipStatus } : {}),
      ...(result.codec !== undefined ? { codec: result.codec } : {}),
      ...(result.packets !== undefined ? { rtp_packets: result.packets } : {}),
      ...(result.answerDelayMs !== undefined ? { answer_ms: result.answerDelayMs } : {}),
    };
    log.info({ ...detail }, 'voice call finished');
    this.deps.metrics.callEnded('voice', trunk.name, result.outcome);
    await redis.hset(key, { outcome: result.outcome, ...(result.sipStatus !== undefined ? { final_sip_status: String(result.sipStatus) } : {}) });
    if (!result.answered) {
      await events.publish({
        ...base,
        status: 'failed',
        detail: { ...detail, reason: result.outcome, ...(NOT_ON_NETWORK.has(result.outcome) ? { refund: true } : {}) },
      });
    }
    return result;
  }

  /** The caller ID shown: `voice.callerId`, else the first number of a DID range (same country first). */
  private callerId(country: string): string {
    const configured = this.deps.config.voice.callerId;
    if (configured) return configured;
    const range = this.deps.ranges.candidates(country)[0] ?? this.deps.config.numbers.ranges[0]!;
    return `${range.prefix}0000`;
  }

  private pickTrunk(): TrunkConfig {
    // Trunk failover lands with the resilience work; today the first trunk carries the calls.
    return this.deps.config.sip.trunks[0]!;
  }

  private bucket(trunk: TrunkConfig): TokenBucket {
    let b = this.buckets.get(trunk.name);
    if (!b) {
      b = new TokenBucket(trunk.cps);
      this.buckets.set(trunk.name, b);
    }
    return b;
  }
}
