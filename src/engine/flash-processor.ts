import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Config, TrunkConfig } from '../config/schema.js';
import type { Sealer } from '../crypto/sealer.js';
import type { EventPublisher } from '../events/event-publisher.js';
import type { Metrics } from '../metrics/metrics.js';
import type { RangeSelector } from '../numbers/range-selector.js';
import type { CallOriginator } from '../sip/call-originator.js';
import type { Keys } from '../store/keys.js';
import { generateCode } from '../verification/codes.js';
import { placeFlashCall, type FlashResult } from './flash-call.js';
import { TokenBucket } from './token-bucket.js';

/** Outcomes that never reached the far end: the attempt is refunded. */
const NOT_ON_NETWORK = new Set(['unreachable', 'timeout', 'no_cli']);

/**
 * Delivers one flash-call verification: loads the sealed record, reserves a
 * CLI (range prefix + code) under cooldown, places the call under the trunk's
 * CPS, and reports every step to the events stream.
 */
export class FlashProcessor {
  private readonly buckets = new Map<string, TokenBucket>();

  constructor(
    private readonly deps: {
      redis: Redis;
      keys: Keys;
      sealer: Sealer;
      config: Readonly<Config>;
      originator: CallOriginator;
      ranges: RangeSelector;
      events: EventPublisher;
      metrics: Metrics;
      logger: Logger;
    },
  ) {}

  async process(requestId: string): Promise<FlashResult | undefined> {
    const { redis, keys, sealer, config, events } = this.deps;
    const key = keys.verification(requestId);
    const [status, accountId, phoneEnc, codeEnc, country, expiresAt, method] = await redis.hmget(
      key,
      'status',
      'account_id',
      'phone_enc',
      'code_enc',
      'country',
      'expires_at',
      'method',
    );
    const log = this.deps.logger.child({ request_id: requestId });
    if (!status || !accountId || !phoneEnc || !codeEnc) {
      log.warn('flash job for a verification that no longer exists; dropped');
      return undefined;
    }
    if (method !== 'flash_call') {
      log.error({ method }, 'flash job for a verification of another method; dropped');
      return undefined;
    }
    if (status !== 'sent') {
      log.info({ status }, 'verification already past sent; not calling again');
      return undefined;
    }
    const base = { request_id: requestId, account_id: accountId, method: 'flash_call' as const };
    if (Date.now() >= Number(expiresAt)) {
      await events.publish({ ...base, status: 'failed', detail: { reason: 'expired_before_delivery', refund: true } });
      return undefined;
    }
    // Record the dial before the INVITE leaves: a job re-run after a worker
    // crash finds it and never calls the destination twice for one attempt.
    if ((await redis.hsetnx(key, 'dial_started', String(Date.now()))) === 0) {
      log.warn('a previous worker already dialled this verification (crash?); not dialling again');
      await events.publish({ ...base, status: 'failed', detail: { reason: 'interrupted' } });
      return undefined;
    }

    const to = sealer.open(phoneEnc, `phone:${requestId}`);
    const destMac = sealer.mac('destination', to);
    let code = sealer.open(codeEnc, `code:${requestId}`);
    let reserved = await this.deps.ranges.reserve(country ?? 'ZZ', code, destMac);
    // Every range's CLI with this code is cooling down towards this number: pick another code.
    for (let i = 0; !reserved && i < 5; i++) {
      code = generateCode(4);
      await redis.hset(key, {
        code_mac: sealer.mac('code', `${requestId}:${code}`),
        code_enc: sealer.seal(code, `code:${requestId}`),
      });
      reserved = await this.deps.ranges.reserve(country ?? 'ZZ', code, destMac);
    }
    if (!reserved) {
      log.error('no DID range has a free CLI for this destination');
      await events.publish({ ...base, status: 'failed', detail: { reason: 'no_cli', refund: true } });
      return undefined;
    }

    const trunk = this.pickTrunk();
    await this.bucket(trunk).take();
    const t1 = config.sip.timers.t1Ms;
    this.deps.metrics.callStarted('flash_call', trunk.name);
    const result = await placeFlashCall(this.deps.originator, {
      to,
      cli: reserved.cli,
      trunk,
      ringMs: config.flash.ringMs,
      ringingTimeoutMs: config.flash.ringingTimeoutMs,
      settleMs: 64 * t1 + 1000,
      logger: log,
      onRinging: (callId, sipStatus) => {
        void events
          .publish({ ...base, status: 'delivered', detail: { sip_status: sipStatus, call_id: callId, trunk: trunk.name, range: reserved.range.prefix } })
          .catch((err: Error) => log.error({ err: err.message }, 'could not publish delivered event'));
      },
    });
    const detail = {
      outcome: result.outcome,
      call_id: result.callId,
      trunk: trunk.name,
      range: reserved.range.prefix,
      ...(result.sipStatus !== undefined ? { sip_status: result.sipStatus } : {}),
      ...(result.postDialDelayMs !== undefined ? { pdd_ms: result.postDialDelayMs } : {}),
    };
    log.info({ ...detail }, 'flash call finished');
    this.deps.metrics.callEnded('flash_call', trunk.name, result.outcome, result.postDialDelayMs);
    // Delivered = the caller ID was shown (rang, or answered without an 18x).
    if (result.rang || result.outcome === 'answered') this.deps.metrics.rangeSent(reserved.range.prefix);
    // The call's own outcome, for operators (the status itself follows from events).
    await redis.hset(key, { outcome: result.outcome, ...(result.sipStatus !== undefined ? { final_sip_status: String(result.sipStatus) } : {}) });
    if (!result.rang && result.outcome !== 'answered' && result.outcome !== 'cancelled') {
      await events.publish({
        ...base,
        status: 'failed',
        detail: { ...detail, reason: result.outcome, ...(NOT_ON_NETWORK.has(result.outcome) ? { refund: true } : {}) },
      });
    } else if (!result.rang) {
      // Answered without a ringing 18x first: the caller ID was shown all the same.
      await events.publish({ ...base, status: 'delivered', detail });
    }
    return result;
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
