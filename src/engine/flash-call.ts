import type { Logger } from 'pino';
import type { TrunkConfig } from '../config/schema.js';
import type { CallFailureReason, CallOriginator, OutboundCall } from '../sip/call-originator.js';
import { onAbort } from './abort-fanout.js';

/** How a flash call ended (design.md "Flash call, precisely"). */
export type FlashOutcome =
  /** Rang, then our CANCEL got 487 (or the far end ended it after ringing): the code was shown. */
  | 'cancelled'
  /** Answered (before or across our CANCEL): ACK + BYE at once; the code was shown, billable. */
  | 'answered'
  /** No 18x within ringingTimeoutMs: CANCELled, nothing shown. */
  | 'no_ringing'
  /** The worker was stopping (SIGTERM, grace over) before the phone rang: CANCELled, nothing shown. */
  | 'shutdown'
  | CallFailureReason;

export interface FlashResult {
  outcome: FlashOutcome;
  callId: string;
  /** True once the first ringing 18x arrived (the `delivered` moment). */
  rang: boolean;
  /** True once any provisional response above 100 arrived (a 183 without ringOn183 too): the far end took the call. */
  early: boolean;
  /** Final SIP status, when one arrived. */
  sipStatus?: number;
  phrase?: string;
  /** The Q.850 cause of a failed call's final response (Reason header), when it had one. */
  q850Cause?: number;
  /** The call failed on this side (CallFailure.local): nothing to say of the trunk. */
  local?: true;
  /** INVITE → first ringing 18x, ms. */
  postDialDelayMs?: number;
}

export interface FlashCallParams {
  to: string;
  cli: string;
  trunk: TrunkConfig;
  ringMs: number;
  ringingTimeoutMs: number;
  /** Upper bound on the whole call once CANCEL is due (covers Timer B of the INVITE/CANCEL). */
  settleMs: number;
  logger: Logger;
  /** Called once, at the first ringing 18x (180, or 183 on trunks with ringOn183). */
  onRinging?(callId: string, status: number): void;
  /** Worker shutdown: see `ShutdownSignals`. */
  shutdown?: ShutdownSignals;
}

/**
 * How a stopping worker tells its calls (SIGTERM). `draining`: a ringing
 * flash call is CANCELled at once (the caller ID has been shown), one not yet
 * ringing is CANCELled at its first 18x; `expiring` (the grace period is
 * nearly over): every call ends now.
 */
export interface ShutdownSignals {
  draining: AbortSignal;
  expiring: AbortSignal;
}

/**
 * The flash-call policy, written once against CallOriginator so that every
 * backend maps every outcome identically: first ringing 18x → hold ringMs →
 * CANCEL; no 18x in time → CANCEL (no_ringing); a 2xx (even one that crossed
 * the CANCEL) is `answered` and hung up at once.
 */
export function placeFlashCall(originator: CallOriginator, p: FlashCallParams): Promise<FlashResult> {
  return new Promise<FlashResult>((resolve) => {
    const started = performance.now();
    let rang = false;
    let early = false;
    let noRinging = false;
    let stopping = false;
    let settled = false;
    let postDialDelayMs: number | undefined;
    const timers: NodeJS.Timeout[] = [];
    const clear = (): void => timers.forEach(clearTimeout);
    // Assigned right after originate(); a backend may report a failure synchronously.
    let call: OutboundCall | undefined;

    const unlisten: (() => void)[] = [];
    const finish = (r: Omit<FlashResult, 'callId' | 'rang' | 'early' | 'postDialDelayMs'>): void => {
      if (settled) return;
      settled = true;
      clear();
      unlisten.forEach((f) => f());
      resolve({ ...r, callId: call?.callId ?? '', rang, early, postDialDelayMs });
    };

    call = originator.originate(
      { to: p.to, from: p.cli, trunk: p.trunk, logger: p.logger },
      {
        onProvisional(status) {
          early = true;
          const ringing = status === 180 || (status === 183 && p.trunk.ringOn183);
          if (!ringing || rang || noRinging || settled) return;
          rang = true;
          postDialDelayMs = Math.round(performance.now() - started);
          clearTimeout(timers[0]);
          p.onRinging?.(call?.callId ?? '', status);
          // A stopping worker does not hold the ring: the caller ID is already on the handset.
          timers.push(setTimeout(() => call?.cancel(), p.shutdown?.draining.aborted ? 0 : p.ringMs));
          // Guard: if CANCEL and INVITE both hang, stop waiting (the stack's Timer B reports too).
          timers.push(setTimeout(() => finish({ outcome: 'cancelled', phrase: 'no final response after CANCEL' }), p.ringMs + p.settleMs));
        },
        onAnswered(_sdp, crossedCancel) {
          if (!crossedCancel) void call?.hangup().catch(() => undefined);
          finish({ outcome: 'answered', sipStatus: 200 });
        },
        onCancelled(finalStatus) {
          // No final response after the CANCEL (64*T1): no SIP status to report, not a made-up 487.
          finish({
            outcome: rang ? 'cancelled' : stopping ? 'shutdown' : noRinging ? 'no_ringing' : 'cancelled',
            sipStatus: finalStatus,
            ...(finalStatus === undefined ? { phrase: 'no final response after CANCEL' } : {}),
          });
        },
        onFailed(f) {
          if (f.early) early = true;
          // Once it rang the caller ID was shown: a busy/decline after ringing is still a delivery.
          // A timeout here means not even a 100 came back (Timer B): `timeout`, not no_ringing.
          // Unreachable stays unreachable while stopping too: the call never reached the network, whatever stopped it.
          if (rang) finish({ outcome: 'cancelled', sipStatus: f.status, phrase: f.phrase });
          else finish({ outcome: f.reason, sipStatus: f.status, phrase: f.phrase, ...(f.q850 ? { q850Cause: f.q850.cause } : {}), ...(f.local ? { local: true } : {}) });
        },
      },
    );
    timers.push(
      setTimeout(() => {
        noRinging = true;
        call?.cancel();
        timers.push(setTimeout(() => finish({ outcome: 'no_ringing' }), p.settleMs));
      }, p.ringingTimeoutMs),
    );
    const on = (signal: AbortSignal | undefined, fn: () => void): void => {
      if (!signal || settled) return;
      unlisten.push(onAbort(signal, fn));
    };
    // Ringing: CANCEL now. Not ringing yet: the 18x handler above CANCELs at once.
    on(p.shutdown?.draining, () => {
      if (rang) call?.cancel();
    });
    on(p.shutdown?.expiring, () => {
      if (!rang) stopping = true;
      call?.cancel();
    });
  });
}
