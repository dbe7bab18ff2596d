import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Config, RangeConfig } from '../config/schema.js';
import type { Sealer } from '../crypto/sealer.js';
import type { EventPublisher } from '../events/event-publisher.js';
import type { Metrics } from '../metrics/metrics.js';
import type { RangeHealth } from '../numbers/range-health.js';
import type { RangeSelector } from '../numbers/range-selector.js';
import type { CallOriginator } from '../sip/call-originator.js';
import type { Keys } from '../store/keys.js';
import { generateCode } from '../verification/codes.js';
import { placeFlashCall, type FlashResult, type ShutdownSignals } from './flash-call.js';
import { callResume, markDialing, recordAttemptFields, watchUnlessEnded } from './attempt-state.js';
import { claimDelivery } from './delivery-claim.js';
import { failNoRoute, placeOnTrunks } from './route-advance.js';
import type { TrunkPacer } from './trunk-pacer.js';
import { untilTaken } from '../store/redis.js';

/** Outcomes that never reached the far end: the attempt is refunded. */
const NOT_ON_NETWORK = new Set(['unreachable', 'timeout', 'no_cli', 'shutdown']);

/**
 * Delivers one flash-call verification: loads the sealed record, reserves a
 * CLI (range prefix + code) under cooldown, places the call under the trunk's
 * CPS, and reports every step to the events stream.
 */
export class FlashProcessor {
  constructor(
    private readonly deps: {
      redis: Redis;
      keys: Keys;
      sealer: Sealer;
      config: Readonly<Config>;
      originator: CallOriginator;
      ranges: RangeSelector;
      trunks: TrunkPacer;
      events: EventPublisher;
      metrics: Metrics;
      logger: Logger;
      shutdown?: ShutdownSignals;
      /** Per-range outcomes for conversion tracking and quarantine (fraud.rangeHealth). */
      health?: RangeHealth;
    },
  ) {}

  /** `jobId`: the delivery job's id, which names the send it is for (claimDelivery drops a job of another send). */
  async process(requestId: string, jobId?: string): Promise<FlashResult | undefined> {
    const { redis, sealer, config, events } = this.deps;
    // Re-run after a crash: a call that already rang was delivered (its event is in the stream); any other may have left.
    // One that never got past its wait for a channel or CPS token (no dial mark of this job): never left, refunded.
    const claim = await claimDelivery(this.deps, { requestId, jobId }, 'flash_call', ['rang_at', 'dial_job'], callResume(jobId, 'rang_at'));
    if (!claim) return undefined;
    const claimedAt = Date.now();
    const { key, base, log, to, country } = claim;
    // No trunk carries this number (sip.trunks[].prefixes, no default route): failed before a caller ID is taken.
    if (!this.deps.trunks.routes(to)) return failNoRoute(this.deps, base, log);
    const destMac = sealer.mac('destination', to);
    const previousDestMacs = sealer.previousMacs('destination', to);
    let code = claim.code;
    // A range whose caller IDs may only go on some trunks (numbers.ranges[].trunks) serves the numbers those trunks route.
    const { trunks } = this.deps;
    const presentable = (range: RangeConfig) => range.trunks === undefined || trunks.routes(to, range.trunks);
    if (!this.deps.ranges.has(presentable)) {
      log.error('no DID range may be presented on a trunk that routes this destination (numbers.ranges[].trunks); not dialled');
      await events.publish({ ...base, status: 'failed', detail: { reason: 'no_cli', refund: true } });
      return undefined;
    }
    let reserved = await this.deps.ranges.reserve(country, code, destMac, previousDestMacs, presentable);
    // Every range's CLI with this code is cooling down towards this number: pick another code.
    for (let i = 0; !reserved && i < 5; i++) {
      code = generateCode(4);
      // Only while this is still the request's step: a workflow's next step has its own code, not to be overwritten.
      const mine = await recordAttemptFields(redis, key, base.step, {
        code_mac: sealer.mac('code', `${requestId}:${code}`),
        code_enc: sealer.seal(code, `code:${requestId}`),
      });
      if (!mine) {
        log.info('workflow step over while its flash call looked for a free caller ID; not dialled');
        await events.publish({ ...base, status: 'failed', detail: { reason: 'request_ended', refund: true } });
        return undefined;
      }
      reserved = await this.deps.ranges.reserve(country, code, destMac, previousDestMacs, presentable);
    }
    if (!reserved) {
      log.error('no DID range has a free CLI for this destination');
      await events.publish({ ...base, status: 'failed', detail: { reason: 'no_cli', refund: true } });
      return undefined;
    }

    // On the trunk's channel, under its CPS; placed again on the next trunk when one refuses it before it rang.
    const placed = await placeOnTrunks(this.deps, 'flash_call', { to, allowed: reserved.range.trunks }, log, async (trunk) => {
      // The range of this call's CLI, for the conversion of the range when the request is verified; written while the
      // trunk's CPS token is awaited, in place before the INVITE leaves. A workflow's step may be over by now: its next
      // step's range is not overwritten (a plain request keeps the one-command write on the hot path).
      // `cli_quarantined`: the range was used while quarantined; its verification is not judged either (fraud-controls.ts).
      const quarantined = reserved.quarantined ? '1' : '0';
      const rangeWrite =
        base.step === undefined
          ? untilTaken(redis, () => redis.hset(key, 'cli_range', reserved.range.prefix, 'cli_quarantined', quarantined))
          : recordAttemptFields(redis, key, base.step, { cli_range: reserved.range.prefix, cli_quarantined: quarantined });
      await this.deps.trunks.guarded(trunk, Promise.all([rangeWrite, this.deps.trunks.take(trunk)]));
      // Canceled, verified, expired, or its workflow step timed out while the phone rings: CANCEL now rather than
      // at the end of ringMs (through the same path as a worker shutdown).
      // Canceled, expired or its step over while it waited for a channel or the trunk's CPS token (a backlog): never
      // dialled, refunded.
      const watch = await watchUnlessEnded(this.deps, key, base, trunk, claimedAt, log);
      if (!watch) return undefined;
      // From here the call may leave (a re-run after a crash before it: refunded, see claimDelivery).
      markDialing(redis, key, base.step, jobId, log);
      this.deps.metrics.callStarted('flash_call', trunk.name);
      const result = await this.deps.trunks.guarded(trunk, placeFlashCall(this.deps.originator, {
        to,
        cli: reserved.cli,
        trunk,
        ringMs: trunk.ringMs ?? config.flash.ringMs,
        ringingTimeoutMs: trunk.ringingTimeoutMs ?? config.flash.ringingTimeoutMs,
        settleMs: 64 * config.sip.timers.t1Ms + 1000,
        logger: log,
        shutdown: watch.callSignals(this.deps.shutdown),
        onRinging: (callId, sipStatus) => {
          // The event and the mark in one script, the event first: a re-run that finds the mark knows the delivery is done.
          const delivered = { ...base, status: 'delivered' as const, detail: { sip_status: sipStatus, call_id: callId, trunk: trunk.name, range: reserved.range.prefix } };
          events.write(delivered, { rang_at: String(Date.now()) }).catch((err: Error) =>
            log.error({ err: err.message }, 'could not publish delivered event'),
          );
        },
      })).finally(() => watch.stop());
      return { result, watch };
    });
    if (!placed) return undefined;
    const { trunk, result, watch } = placed;
    // CANCELled before it rang because the request (or its step) ended: no failure to report.
    const ended = watch.ended && !result.rang && result.outcome !== 'answered';
    const outcome = ended ? 'request_ended' : result.outcome;
    const detail = {
      outcome,
      call_id: result.callId,
      trunk: trunk.name,
      range: reserved.range.prefix,
      ...(result.sipStatus !== undefined ? { sip_status: result.sipStatus } : {}),
      ...(result.q850Cause !== undefined ? { q850_cause: result.q850Cause } : {}),
      ...(result.postDialDelayMs !== undefined ? { pdd_ms: result.postDialDelayMs } : {}),
    };
    log.info({ ...detail }, 'flash call finished');
    this.deps.metrics.callEnded('flash_call', trunk.name, outcome, result.postDialDelayMs);
    this.deps.trunks.report(trunk, this.deps.trunks.verdictOf(result.outcome, result.sipStatus, result.local));
    // Delivered = the caller ID was shown (rang, or answered without an 18x).
    if (result.rang || result.outcome === 'answered') this.deps.metrics.rangeSent(reserved.range.prefix);
    // The range's counters (batched in memory, written every 250 ms; a judgement of the range reads Redis) and the
    // call's own outcome (for operators; the status itself follows from events) are independent: issued together.
    await Promise.all([
      this.deps.health && !NOT_ON_NETWORK.has(result.outcome) && !ended
        ? this.deps.health
            // A final 403/603 before any ringing: the far network refused this caller ID (range health judges the ratio).
            // A quarantined range used because every range was: the day's counters, not the window it is judged on.
            .recordDial(
              reserved.range.prefix,
              { sent: result.rang || result.outcome === 'answered', rejected: !result.rang && (result.sipStatus === 403 || result.sipStatus === 603) },
              undefined,
              !reserved.quarantined,
            )
            .catch((err: Error) => log.warn({ err: err.message }, 'could not record the range outcome'))
        : undefined,
      // Not over the fields of a later workflow step, when this one timed out during the call.
      recordAttemptFields(redis, key, base.step, { outcome, ...(result.sipStatus !== undefined ? { final_sip_status: String(result.sipStatus) } : {}) }),
    ]);
    if (ended) {
      // The request (or its step) ended while the INVITE went unanswered: nothing to report to it, but a call that
      // never reached the network is refunded all the same. The status consumer refunds it once whatever the status
      // is by now (canceled, expired, a later workflow step: that attempt's price) and records nothing else.
      if (result.outcome === 'timeout' || result.outcome === 'unreachable') {
        await events.publish({ ...base, status: 'failed', detail: { ...detail, reason: result.outcome, refund: true } });
      }
      return result;
    }
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
}
