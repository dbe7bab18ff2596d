import type { Logger } from 'pino';
import type { TrunkConfig } from '../config/schema.js';
import type { Q850Cause } from './reason.js';

/**
 * The one interface every signalling backend implements (embedded UAC today,
 * drachtio-srf later). Workers and the flash/voice policies only ever see this.
 */

/** Why a call ended without being answered or cancelled by us. */
export type CallFailureReason =
  | 'busy' // 486, 600
  | 'declined' // 603
  | 'not_found' // 404, 604
  | 'unavailable' // 480
  | 'redirected' // 3xx: not followed (RFC 3261 8.1.3.4 leaves it to the UAC), the call fails with its status
  | 'rejected' // any other 4xx-6xx final response
  | 'timeout' // Timer B / Timer F fired, no final response
  | 'unreachable'; // transport error (ICMP unreachable, TCP refused/reset)

export interface OriginateRequest {
  /** Destination in E.164, e.g. "+447700900000"; becomes the user part of the Request-URI. */
  to: string;
  /** Calling line identity in E.164; placed in From and P-Asserted-Identity. */
  from: string;
  trunk: TrunkConfig;
  /** SDP offer body (application/sdp). Omitted: no body (flash call), unless trunk.dummySdp. */
  sdp?: string;
  /** Child logger bound to request_id; the backend adds call_id. */
  logger: Logger;
  /** The Call-ID to use (the caller logs its own lines under it before the call starts); default: a new one. */
  callId?: string;
}

/** A final response to the INVITE, or the lack of one. */
export interface CallFailure {
  reason: CallFailureReason;
  /** SIP status of the final response, when there was one. */
  status?: number;
  /** Reason phrase of the final response, or a transport error text. */
  phrase?: string;
  /** The Q.850 cause in the final response's Reason header (RFC 3326), when it had one (sip/reason.ts). */
  q850?: Q850Cause;
  /**
   * The failure is this side's, not the trunk's: drachtio-server not connected (or its connection lost), the SIP stack
   * stopping. Such a call is `unreachable` (refunded) but says nothing of the trunk's health, and is not placed again
   * on another trunk (every trunk goes through the same stack).
   */
  local?: true;
  /**
   * The far end took the INVITE although no provisional response was read (it answered something that could not be
   * read): as after one, the call is not placed again on another trunk, where the phone would ring a second time.
   */
  early?: true;
}

/**
 * Delegate through which a backend reports what happens to one call. Exactly
 * one of onAnswered / onFailed / onCancelled is called per call; onEnded is
 * called last, once, when every transaction of the call is over.
 */
export interface CallDelegate {
  /** A 1xx other than 100 arrived (180, 181, 182, 183 ...). */
  onProvisional?(status: number, phrase: string, sdp: string | undefined): void;
  /**
   * A 2xx arrived; the backend has already sent the ACK. `crossedCancel` is
   * true when we had asked for a CANCEL (RFC 3261 9.1: the 2xx won the race);
   * in that case the backend sends BYE at once by itself.
   */
  onAnswered?(sdp: string | undefined, crossedCancel: boolean): void;
  /** The INVITE ended with a non-2xx final response other than our CANCEL's 487, or with no response. */
  onFailed?(failure: CallFailure): void;
  /**
   * Our CANCEL succeeded: `finalStatus` 487 when the INVITE got 487 Request Terminated, undefined when it got no
   * final response at all within 64*T1 of the CANCEL (RFC 3261 9.1: considered cancelled; no status to report).
   */
  onCancelled?(finalStatus: number | undefined): void;
  /**
   * A re-INVITE's SDP offer on the established call (the far end's media moved, hold, a refresh): return the answer,
   * or undefined to refuse it (488: the call keeps its media), at once or later (a media server asked first).
   * Absent: the backend answers with the call's own SDP.
   */
  onOffer?(sdp: string): string | undefined | Promise<string | undefined>;
  /**
   * A re-INVITE without an offer on the established call (RFC 3261 14.2): our offer, in the 200 (embedded backend).
   * Absent: the call's own SDP is offered, and the ACK's answer is not applied.
   */
  onOfferWanted?(): string;
  /** The ACK's answer to that offer: applied to the media; throws when it cannot be taken (the call then ends with BYE). */
  onAnswer?(sdp: string): void;
  /**
   * The far end ended the established dialog: it sent BYE (answered with 200 by the backend), or (embedded backend)
   * it never ACKed our 2xx to its re-INVITE within 64*T1, and the backend sent the BYE (RFC 3261 13.3.1.4).
   */
  onRemoteHangup?(): void;
  /** The call is fully over (all transactions terminated or abandoned). */
  onEnded?(): void;
}

export interface OutboundCall {
  /** SIP Call-ID, for logs and events. */
  readonly callId: string;
  /**
   * Ask for the INVITE to be cancelled. Sent at once if a provisional response
   * has been received (INVITE transaction Proceeding), else as soon as one
   * arrives (RFC 3261 9.1); idempotent. If a 2xx arrives instead, ACK + BYE.
   */
  cancel(): void;
  /** BYE an established dialog; resolves when the BYE transaction ends. No-op otherwise. */
  hangup(): Promise<void>;
}

/** How an OPTIONS keep-alive ping to a trunk ended. */
export type PingOutcome =
  /** A final response came, whatever its status (200, 403, 405, 401/407 not answered, 5xx ...): something answers at the trunk's address. */
  | 'answered'
  /** No final response within the ping's timeout (or Timer F). */
  | 'timeout'
  /** Transport error: ICMP unreachable, TCP refused/reset (or the backend could not put it on the wire). */
  | 'unreachable'
  /** The backend did not send it (stack stopped, drachtio-server not connected, trunk URI invalid): says nothing about the trunk. */
  | 'not_sent';

export interface PingRequest {
  trunk: TrunkConfig;
  /** No final response within this → `timeout`. The embedded stack never waits past Timer F (64*T1). */
  timeoutMs: number;
  /** Child logger (bound to the trunk); the backend adds call_id. */
  logger: Logger;
}

export interface PingResult {
  outcome: PingOutcome;
  /** Call-ID of the OPTIONS ('' when none was sent). */
  callId: string;
  /** Status of the final response, when one came. */
  status?: number;
  /** Its reason phrase, or why there was none. */
  phrase?: string;
}

export interface CallOriginator {
  /** Bind transports. */
  start(): Promise<void>;
  /** Close transports; calls in flight are reported as failed `unreachable`, pings in flight as `not_sent`. */
  stop(): Promise<void>;
  /** Send an INVITE; the delegate hears everything that follows. Never throws for network reasons. */
  originate(request: OriginateRequest, delegate: CallDelegate): OutboundCall;
  /**
   * Send one out-of-dialog OPTIONS to the trunk (RFC 3261 11), a keep-alive ping: Request-URI the trunk URI,
   * `Accept: application/sdp`, the trunk's fromDomain and extra headers as on its INVITEs; a 401/407 is not
   * answered with credentials (it is an answer already). Not a call: no call metric, no CPS token. Never rejects.
   */
  ping(request: PingRequest): Promise<PingResult>;
}

/**
 * Calls one delegate callback; a callback that throws is logged, never
 * allowed to break the backend's state machine.
 */
export function callDelegate(log: Logger, name: string, fn: () => void): void {
  try {
    fn();
  } catch (err) {
    log.error({ err: err instanceof Error ? err.message : String(err), callback: name }, 'call delegate threw');
  }
}

/** The single non-answer outcome of a call, logged and reported the same way by every backend. */
export function reportCallEnd(
  log: Logger,
  delegate: CallDelegate,
  outcome: 'failed' | 'cancelled',
  failure?: CallFailure,
  /** Cancelled: the INVITE's final status (487), undefined when none came. */
  cancelFinal?: number,
): void {
  if (outcome === 'cancelled') {
    log.info({ final_status: cancelFinal ?? 'none' }, 'SIP call cancelled');
    callDelegate(log, 'onCancelled', () => delegate.onCancelled?.(cancelFinal));
  } else {
    const f: CallFailure = failure ?? { reason: 'rejected' };
    log.info({ reason: f.reason, status: f.status, phrase: f.phrase, q850_cause: f.q850?.cause, q850_text: f.q850?.text }, 'SIP call failed');
    callDelegate(log, 'onFailed', () => delegate.onFailed?.(f));
  }
}

/**
 * A delegate's answer to a re-INVITE's offer (onOffer), at once or as a promise that never rejects: undefined (the
 * backend answers 488, the call keeps its media) when it refused, threw or rejected; warned with the call's log.
 */
export function answerToOffer(onOffer: NonNullable<CallDelegate['onOffer']>, offer: string, log: Logger): string | undefined | Promise<string | undefined> {
  const failed = (err: unknown): undefined => {
    log.warn({ err: err instanceof Error ? err.message : String(err) }, 're-INVITE offer not taken; the call keeps its media');
    return undefined;
  };
  try {
    const answer = onOffer(offer);
    return typeof answer === 'object' ? answer.catch(failed) : answer;
  } catch (err) {
    return failed(err);
  }
}
