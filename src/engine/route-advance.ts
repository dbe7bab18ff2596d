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
import type { Metrics } from '../metrics/metrics.js';
import type { TrunkPacer } from './trunk-pacer.js';

/** Why the trunk refused the call before it rang (`unreachable`, `sip_503` ...), or undefined: not one to place again. */
export function refusedBeforeRinging(
  result: { outcome: string; rang: boolean; early: boolean; sipStatus?: number | undefined },
  failureStatuses: readonly number[],
): string | undefined {
  if (result.rang || result.early || result.outcome === 'answered') return undefined;
  if (result.outcome === 'unreachable') return 'unreachable';
  if (result.sipStatus !== undefined && failureStatuses.includes(result.sipStatus)) return `sip_${result.sipStatus}`;
  return undefined;
}

/**
 * After a call on `trunk` ended: the trunk to place it on next, or undefined (the call's outcome is final). A refused
 * call (refusedBeforeRinging) with another live trunk not yet tried is logged, counted (its outcome on this trunk, the
 * advance) and reported to the trunk's health here; the caller places it again on the trunk returned.
 */
export function advanceRoute(
  deps: { config: Readonly<Config>; trunks: Pick<TrunkPacer, 'pickAnother' | 'report' | 'verdictOf'>; metrics: Pick<Metrics, 'callEnded' | 'routeAdvanced'> },
  call: {
    method: 'flash_call' | 'voice';
    trunk: TrunkConfig;
    /** Trunks already tried for this call (this one is added). */
    tried: Set<string>;
    /** The request (or its step) ended meanwhile: never advanced. */
    requestEnded: boolean;
    result: { outcome: string; callId: string; rang: boolean; early: boolean; sipStatus?: number | undefined; postDialDelayMs?: number | undefined };
    log: Logger;
  },
): TrunkConfig | undefined {
  const { config, trunks, metrics } = deps;
  const { trunk, result } = call;
  const refused = config.sip.routeAdvance && !call.requestEnded ? refusedBeforeRinging(result, config.sip.trunkHealth.failureStatuses) : undefined;
  if (refused === undefined) return undefined;
  call.tried.add(trunk.name);
  const next = trunks.pickAnother(call.tried);
  if (next === undefined) return undefined;
  call.log.warn(
    { trunk: trunk.name, next_trunk: next.name, reason: refused, call_id: result.callId, sip_status: result.sipStatus },
    'trunk refused the call before it rang; placed again on the next trunk',
  );
  metrics.callEnded(call.method, trunk.name, result.outcome, result.postDialDelayMs);
  metrics.routeAdvanced(call.method, trunk.name, refused);
  trunks.report(trunk, trunks.verdictOf(result.outcome, result.sipStatus));
  return next;
}
