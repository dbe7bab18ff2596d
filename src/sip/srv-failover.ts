/**
 * RFC 3263 4.3 for one request outside a dialog (a call's INVITE, an OPTIONS ping) to a trunk located by DNS SRV
 * (sip-locator.ts): "failure occurs if the transaction layer reports a 503 error response or a transport failure of
 * some sort (generally, due to fatal ICMP errors in UDP or connection failures in TCP). Failure also occurs if the
 * transaction layer times out without ever having received any response, provisional or final (i.e., timer B or
 * timer F in RFC 3261 fires). If a failure occurs, the client SHOULD create a new request, which is identical to the
 * previous, but has a different value of the Via branch ID than the previous (and therefore constitutes a new SIP
 * transaction). That request is sent to the next element in the list". Same Call-ID, From tag and CSeq, then.
 *
 * Any other response keeps the request on its target: a 100 Trying, a 180, a 486 ... only a 503 moves it, whatever
 * came before it (the RFC names the 503 without condition; RFC 3261 21.5.4: "SHOULD attempt to forward the request
 * to an alternate server"). The target a request failed at is marked, so the following requests try it last.
 *
 * What this adds, and why:
 * - With another target left, a target silent for `targetTimeoutMs` (no response at all, not even 100 Trying) is left
 *   then, not at Timer B/F: 64*T1 (32 s) is twice a flash call's ringing timeout, so a black-holed first target would
 *   cost every call its window. A server transaction answers an INVITE with 100 Trying within 200 ms (RFC 3261
 *   17.2.1): a few seconds of silence, over several UDP retransmissions, tells what Timer B tells. The last target
 *   keeps Timer B/F, and a silent target is left only once the next one has an address.
 * - No new target once 64*T1 (Timer B) has passed since the request was first sent, nor once its user gave up on it
 *   (the call asked for a CANCEL: its own deadline passed): failover does not stretch a call past its deadline.
 */
import type { Logger } from 'pino';
import type { TrunkConfig } from '../config/schema.js';
import type { Clock, SipTimerConfig, TimerHandle } from './clock.js';
import { getHeader, hdr, type ParsedResponse, type SipRequest } from './message.js';
import type { Located, SrvTargets } from './sip-locator.js';
import type { ClientTransactionUser } from './transactions/transaction.js';
import { destinationKey, type Destination } from './transport.js';
import { errorMessage, newBranch } from './util.js';

/** Why a request left a target: a transport error, no response at all (Timer B/F or targetTimeoutMs), or a 503. */
export type FailoverReason = 'unreachable' | 'timeout' | 'service_unavailable';

/** One move to the next target, as the stack counts it. */
export interface FailoverEvent {
  readonly trunk: string;
  /** `INVITE` or `OPTIONS`. */
  readonly method: string;
  readonly reason: FailoverReason;
}

/** What failover needs from the stack (UacHost extends it). */
export interface FailoverHost {
  readonly clock: Clock;
  readonly timers: SipTimerConfig;
  /** With another target left, a request that has heard nothing from its target this long moves on; 0: Timer B/F only. */
  readonly targetTimeoutMs: number;
  /** A request failed at `destination`: the following requests try it last (for `forMs`, a 503's Retry-After, when given). */
  destinationFailed?(destination: Destination, forMs?: number): void;
  /** A request to `trunk` moves on to `to`: the stack names `to` for the trunk (its transport errors) and counts the move. */
  failedOver?(trunk: TrunkConfig, to: Destination, event: FailoverEvent): void;
}

/** The request's side of failover (a UacCall's INVITE, an OptionsPing). */
export interface FailoverUser {
  /** May the request still move on? False once it has an outcome, or its user gave up on it (asked for a CANCEL). */
  canMove(): boolean;
  /** Send the request again, on a new branch (onNewBranch), to `destination` (the next target now). */
  resend(): void;
  /** The failure stands: no target left, past the deadline, or the user gave up. */
  giveUp(): void;
}

/** Where one request goes, and where it goes next when it fails there (RFC 3263 4.3). */
export class TargetFailover {
  /** The target the request is at now. */
  destination: Destination;
  private readonly rest: SrvTargets | undefined;
  /** No new target after this (Date.now() ms): 64*T1 after the first sending. */
  private readonly until: number;
  private timer: TimerHandle | undefined;
  /**
   * The next target, once asked for, until a move takes it: a lookup begun for a silent target and dropped (a
   * response came meanwhile) serves the next failure, so that no target is passed over.
   */
  private upcoming: Promise<Destination | undefined> | undefined;
  /** Bumped by every event of the request: a next-target lookup finishing after one is dropped. */
  private turn = 0;

  constructor(
    located: Located,
    private readonly host: FailoverHost,
    private readonly trunk: TrunkConfig,
    private readonly method: string,
    private readonly log: Logger,
    private readonly user: FailoverUser,
  ) {
    this.destination = located.destination;
    this.rest = located.rest;
    this.until = Date.now() + 64 * host.timers.t1Ms;
  }

  /** The request was sent to `destination`: with a target left, it has targetTimeoutMs to hear anything from it. */
  sent(): void {
    this.clear();
    const ms = this.host.targetTimeoutMs;
    if (ms > 0 && this.movable(ms)) this.timer = this.host.clock.setTimeout(() => this.silent(), ms);
  }

  /** A response from the current target: the request stays there (a 503 is then reported to failed()). */
  heard(): void {
    this.dispose();
  }

  /**
   * The request failed at its destination (transport error, Timer B/F, 503 with its Retry-After as `forMs`): the
   * target is marked; the request moves on if it can (resend), else its failure stands (giveUp), at once or once the
   * next target's address is known.
   */
  failed(reason: FailoverReason, detail: string, forMs?: number): void {
    this.dispose();
    const turn = this.turn;
    this.host.destinationFailed?.(this.destination, forMs);
    if (!this.movable(0) || !this.user.canMove()) {
      this.user.giveUp();
      return;
    }
    void this.next().then((next) => {
      if (turn !== this.turn) return;
      if (next === undefined || !this.user.canMove()) this.user.giveUp();
      else this.moveTo(next, reason, detail);
    });
  }

  /** The request is over (an outcome, or abandoned): no timer left, no move pending. */
  dispose(): void {
    this.clear();
    this.turn++;
  }

  /** Nothing from the target for targetTimeoutMs: on to the next target if one has an address, else Timer B/F decides. */
  private silent(): void {
    this.timer = undefined;
    const turn = this.turn;
    void this.next().then((next) => {
      if (turn !== this.turn || next === undefined || !this.user.canMove()) return;
      this.host.destinationFailed?.(this.destination);
      this.moveTo(next, 'timeout', `no response within ${this.host.targetTimeoutMs} ms`);
    });
  }

  /** The next target (looked up once, kept until a move takes it); undefined when none is left. Never rejects. */
  private next(): Promise<Destination | undefined> {
    this.upcoming ??= this.rest === undefined ? Promise.resolve(undefined) : this.rest.next().catch(() => undefined);
    return this.upcoming;
  }

  private moveTo(next: Destination, reason: FailoverReason, detail: string): void {
    this.turn++;
    this.upcoming = undefined;
    this.log.warn(
      { trunk: this.trunk.name, method: this.method, from: destinationKey(this.destination), to: destinationKey(next), reason, detail },
      'SIP request failed at an SRV target; sent again to the next one',
    );
    this.destination = next;
    this.host.failedOver?.(this.trunk, next, { trunk: this.trunk.name, method: this.method, reason });
    this.user.resend();
  }

  /** May a target be left (one looked up already, or one not yet), and is there time to move to it `ms` from now? */
  private movable(ms: number): boolean {
    return (this.upcoming !== undefined || (this.rest?.more ?? false)) && Date.now() + ms < this.until;
  }

  private clear(): void {
    if (this.timer !== undefined) this.host.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/**
 * The transaction user of a request that may move between targets: only its current transaction is listened to (one
 * left on a silent target is not), and its timeout (`timer`) or transport error is reported as a failure there.
 */
export function targetUser(
  isCurrent: () => boolean,
  timer: 'Timer B' | 'Timer F',
  on: {
    response(response: ParsedResponse): void;
    failed(reason: 'timeout' | 'unreachable', phrase: string): void;
    /** The INVITE's connection closed on an unreadable answer (ClientTransactionUser.onUnreadableResponse). */
    unreadable?(phrase: string): void;
  },
): ClientTransactionUser {
  const unreadable = on.unreadable;
  return {
    ...(unreadable
      ? {
          onUnreadableResponse: (err: Error) => {
            if (isCurrent()) unreadable(errorMessage(err));
          },
        }
      : {}),
    receiveResponse: (r) => {
      if (isCurrent()) on.response(r);
    },
    onRequestTimeout: () => {
      if (isCurrent()) on.failed('timeout', `${timer} expired`);
    },
    onTransportError: (err) => {
      if (isCurrent()) on.failed('unreachable', errorMessage(err));
    },
  };
}

/** The same request as a new transaction (RFC 3263 4.3): its top Via on a new branch, all else identical. */
export function onNewBranch(request: SipRequest, via: (branch: string) => string): { request: SipRequest; branch: string } {
  const branch = newBranch();
  return { request: withTopVia(request, via(branch)), branch };
}

/** `request` with its top Via replaced by `via` (another branch, another transport). */
export function withTopVia(request: SipRequest, via: string): SipRequest {
  let top = true;
  const headers = request.headers.map((h) => {
    if (!top || h.key !== 'via') return h;
    top = false;
    return hdr('Via', via);
  });
  return { ...request, headers };
}

/** A 503's Retry-After in ms (RFC 3261 20.33: delta-seconds, then an optional comment and parameters), at most an hour. */
export function retryAfterMs(response: ParsedResponse): number | undefined {
  const m = /^\s*(\d+)/.exec(getHeader(response, 'retry-after') ?? '');
  return m === null ? undefined : Math.min(Number(m[1]), 3600) * 1000;
}
