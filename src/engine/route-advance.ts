/**
 * Route advance (`sip.routeAdvance`, default on): a call its trunk refused before the far end took it is placed again
 * on another live trunk, within the same verification, each trunk once (TrunkPacer.pickAnother). Refused means: the
 * trunk could not be reached (`unreachable`: ICMP unreachable, TCP refused, TLS failed; DNS found nothing), or it
 * answered with one of `sip.trunkHealth.failureStatuses` (503 by default: overload, maintenance, no capacity), and no
 * provisional response above 100 came first. Nothing reached the handset, so nobody is called twice; a timeout (no
 * response at all, Timer B, 32 s) is not advanced: by then the verification has waited too long, and the request may
 * have reached the network.
 */

import type { Logger } from 'pino';
import type { Config, TrunkConfig } from '../config/schema.js';
import type { EventPublisher } from '../events/event-publisher.js';
import type { Metrics } from '../metrics/metrics.js';
import type { AttemptWatch } from './attempt-state.js';
import type { DeliveryClaim } from './delivery-claim.js';
import type { TrunkPacer } from './trunk-pacer.js';

/** What route advance reads of a finished call (flash and voice results both have it). */
export interface CallEnd {
  outcome: string;
  callId: string;
  /** A provisional response above 100 came: the far end took the call (a ringing 18x, or an answer, comes after one or is the outcome). */
  early: boolean;
  sipStatus?: number | undefined;
  q850Cause?: number | undefined;
  postDialDelayMs?: number | undefined;
  /** Failed on this side (CallFailure.local): not the trunk's failure, and another trunk would fail alike. */
  local?: true | undefined;
}

/** Why the trunk refused the call before it rang (`unreachable`, `sip_503` ...), or undefined: not one to place again. */
export function refusedBeforeRinging(result: Pick<CallEnd, 'outcome' | 'early' | 'sipStatus' | 'local'>, failureStatuses: readonly number[]): string | undefined {
  if (result.early || result.outcome === 'answered' || result.local) return undefined;
  if (result.outcome === 'unreachable') return 'unreachable';
  if (result.sipStatus !== undefined && failureStatuses.includes(result.sipStatus)) return `sip_${result.sipStatus}`;
  return undefined;
}

/** One attempt of a call on a trunk: its result, and the watch of its request (ended: the request ended meanwhile). */
export interface Placed<R extends CallEnd> {
  result: R;
  watch: AttemptWatch;
}

/**
 * Places a call on its trunks: picks the trunk, holds one of its channels (`sip.trunks[].maxCalls`) while `attempt`
 * places the call there, and while the trunk refused it before it rang (refusedBeforeRinging, `sip.routeAdvance`) and
 * another live trunk is left, logs and counts the refusal (its outcome on that trunk, the advance), reports it to the
 * trunk's health and places the call again there, each trunk once. Undefined: an attempt placed nothing (the request
 * ended while it waited). Otherwise the last attempt and its trunk, whose outcome and health the caller reports.
 */
export async function placeOnTrunks<R extends CallEnd>(
  deps: {
    config: Readonly<Config>;
    trunks: Pick<TrunkPacer, 'pick' | 'pickAnother' | 'acquire' | 'guarded' | 'report' | 'verdictOf'>;
    metrics: Pick<Metrics, 'callEnded' | 'routeAdvanced'>;
  },
  method: 'flash_call' | 'voice',
  /**
   * The called number (E.164) and the trunks it may go on (a DID range's `trunks`; undefined: any): placed on those of
   * them that route it (sip.trunks[].prefixes; TrunkPacer.routes(to, allowed) is true).
   */
  destination: { to: string; allowed?: readonly string[] | undefined },
  log: Logger,
  attempt: (trunk: TrunkConfig) => Promise<Placed<R> | undefined>,
): Promise<(Placed<R> & { trunk: TrunkConfig }) | undefined> {
  const { config, trunks, metrics } = deps;
  const tried = new Set<string>();
  const { to, allowed } = destination;
  for (let trunk = trunks.pick(to, allowed); ; ) {
    // Held from before the CPS token until the call has ended.
    const release = await trunks.guarded(trunk, trunks.acquire(trunk));
    let placed: Placed<R> | undefined;
    try {
      placed = await attempt(trunk);
    } finally {
      release();
    }
    if (placed === undefined) return undefined;
    const { result } = placed;
    const refused = config.sip.routeAdvance && !placed.watch.ended ? refusedBeforeRinging(result, config.sip.trunkHealth.failureStatuses) : undefined;
    if (refused === undefined) return { ...placed, trunk };
    tried.add(trunk.name);
    const next = trunks.pickAnother(tried, to, allowed);
    if (next === undefined) return { ...placed, trunk };
    log.warn(
      { trunk: trunk.name, next_trunk: next.name, reason: refused, call_id: result.callId, sip_status: result.sipStatus, q850_cause: result.q850Cause },
      'trunk refused the call before it rang; placed again on the next trunk',
    );
    metrics.callEnded(method, trunk.name, result.outcome, result.postDialDelayMs);
    metrics.routeAdvanced(method, trunk.name, refused);
    trunks.report(trunk, trunks.verdictOf(result.outcome, result.sipStatus, result.local));
    trunk = next;
  }
}

/**
 * No trunk routes the called number (sip.trunks[].prefixes, and no trunk without prefixes): the attempt fails
 * `no_route` before a caller ID is taken or anything dialled, and is refunded.
 */
export async function failNoRoute(deps: { events: Pick<EventPublisher, 'publish'> }, base: DeliveryClaim['base'], log: Logger): Promise<undefined> {
  log.error('no SIP trunk routes this destination (no trunk prefix matches it and every trunk has prefixes, or every trunk that does is disabled); not dialled');
  await deps.events.publish({ ...base, status: 'failed', detail: { reason: 'no_route', refund: true } });
  return undefined;
}
