/**
 * One OPTIONS keep-alive ping to a trunk (RFC 3261 11), out of any dialog: what Kamailio's dispatcher
 * (ds_ping_interval), a FreeSWITCH gateway `ping` or Asterisk `qualify` send to learn that a peer is alive
 * without placing a call.
 *
 * Any final response means the trunk answered, whatever its status: a 405 or 403 from an SBC that refuses
 * OPTIONS, a 401/407 (not answered with credentials: the challenge is the answer), a 5xx. Only silence
 * (the ping's timeout, or Timer F) and transport errors count against the trunk.
 *
 * To a trunk located by DNS SRV, a ping that fails at its target (transport error, no response, 503) is sent to the
 * next target, as a call's INVITE is (RFC 3263 4.3, srv-failover.ts), within the ping's own timeout: it answers for
 * the trunk, not for one of its servers. A 503 from the last target is an answer, as above.
 */
import type { Logger } from 'pino';
import type { TrunkConfig } from '../config/schema.js';
import type { PingResult } from './call-originator.js';
import type { Clock, TimerHandle } from './clock.js';
import { hdr, type ParsedResponse, type SipHeader, type SipRequest } from './message.js';
import type { Located } from './sip-locator.js';
import { onNewBranch, retryAfterMs, TargetFailover, targetUser, type FailoverReason } from './srv-failover.js';
import { TransactionState, type ClientTransaction } from './transactions/transaction.js';
import type { TransportProtocol } from './transport.js';
import { ALLOW, resolveTrunk, type TrunkInfo, type UacHost } from './uac.js';
import { newBranch, newCallId, newTag } from './util.js';

/** User part of the From of a ping (a call's From is its caller ID; a ping has none). */
const PING_USER = 'flashverify';

/** Request-URI, From (without tag) and To of a ping to a trunk, shared by both backends. */
export interface PingAddressing {
  /** The trunk URI: `sip[s]:host[:port][;transport=...]` (trunk URIs have no user part). */
  readonly requestUri: string;
  /** `<sip:flashverify@fromDomain>`: the trunk's fromDomain, as on its INVITEs. */
  readonly from: string;
  /** `<sip[s]:host[:port]>` (RFC 3261 11.1: the To of an OPTIONS is the Request-URI). */
  readonly to: string;
}

export function pingAddressing(info: TrunkInfo): PingAddressing {
  return {
    requestUri: `${info.scheme}:${info.hostPort}${info.transportParam}`,
    from: `<sip:${PING_USER}@${info.fromDomain}>`,
    to: `<${info.scheme}:${info.hostPort}>`,
  };
}

export interface OptionsPingOptions {
  host: Pick<UacHost, 'userAgent' | 'clock' | 'timers' | 'via' | 'contact' | 'startTransaction' | 'targetTimeoutMs' | 'destinationFailed' | 'failedOver'>;
  trunk: TrunkConfig;
  timeoutMs: number;
  logger: Logger;
}

/**
 * What every ping has, on either backend: its Call-ID, and `result`, settled once (the first of its final response,
 * its timeout, a transport error, abort()), with the ping's own timeout cleared then.
 */
export abstract class PingAttempt {
  readonly callId = newCallId();
  readonly result: Promise<PingResult>;
  private settle: ((result: PingResult) => void) | undefined;
  private timer: TimerHandle | undefined;

  constructor(private readonly clock: Clock) {
    this.result = new Promise((resolve) => {
      this.settle = resolve;
    });
  }

  /** No result yet. */
  protected get pending(): boolean {
    return this.settle !== undefined;
  }

  /** The stack stops (or its connection is gone): the ping is dropped, `not_sent`. */
  abort(reason: string): void {
    this.abandon();
    this.finish({ outcome: 'not_sent', phrase: reason });
  }

  /** Gives up on the ping after `timeoutMs` with no final response: `timeout`. */
  protected armTimeout(timeoutMs: number): void {
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined;
      this.abandon();
      this.finish({ outcome: 'timeout', phrase: `no final response within ${timeoutMs} ms` });
    }, timeoutMs);
  }

  /** What the backend lets go of when the ping is given up (a transaction); nothing by default. */
  protected abandon(): void {}

  protected finish(result: Omit<PingResult, 'callId'>): void {
    const settle = this.settle;
    if (settle === undefined) return;
    this.settle = undefined;
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    settle({ ...result, callId: this.callId });
  }
}

/** The ping's client transaction and its outcome. Throws AppError('sip_trunk_invalid') for a bad trunk URI or header. */
export class OptionsPing extends PingAttempt {
  private readonly options: OptionsPingOptions;
  private readonly info: TrunkInfo;
  private readonly log: Logger;
  private protocol: TransportProtocol;
  private readonly fromTag = newTag();
  private request: SipRequest;
  private branch = newBranch();
  private tx: ClientTransaction | undefined;
  private failover: TargetFailover | undefined;
  /** How it failed at its last target: the result when no target is left. */
  private failure: Omit<PingResult, 'callId'> = { outcome: 'unreachable' };

  constructor(options: OptionsPingOptions) {
    super(options.host.clock);
    this.options = options;
    this.info = resolveTrunk(options.trunk);
    this.log = options.logger.child({ call_id: this.callId });
    this.protocol = this.info.destination.protocol;
    this.request = this.build();
  }

  /** The OPTIONS over `this.protocol` (Via and Contact name it). */
  private build(): SipRequest {
    const { host } = this.options;
    const protocol = this.protocol;
    const to = pingAddressing(this.info);
    const headers: SipHeader[] = [
      hdr('Via', host.via(protocol, this.branch)),
      hdr('Max-Forwards', '70'),
      ...(this.info.route !== undefined ? [hdr('Route', this.info.route)] : []),
      hdr('From', `${to.from};tag=${this.fromTag}`),
      hdr('To', to.to),
      hdr('Call-ID', this.callId),
      hdr('CSeq', '1 OPTIONS'),
      hdr('Contact', host.contact(protocol, this.info.scheme)),
      // RFC 3261 11.1: Accept SHOULD be included, naming what the UAC would take in the response body.
      hdr('Accept', 'application/sdp'),
      hdr('User-Agent', host.userAgent),
      hdr('Allow', ALLOW),
      ...this.info.extraHeaders,
    ];
    return { kind: 'request', method: 'OPTIONS', uri: to.requestUri, headers, body: undefined };
  }

  /**
   * Send it, to the target DNS SRV chose when there is one, else to the trunk URI's destination; on a failure there,
   * to the SRV targets left. Resolves `result` once: final response, timeout, transport error or abort().
   */
  start(located: Located = { destination: this.info.destination }): void {
    const { host } = this.options;
    // DNS chose another transport than the URI's default (NAPTR, or SRV of each transport: RFC 3263 4.1).
    if (located.destination.protocol !== this.protocol) {
      this.protocol = located.destination.protocol;
      this.request = this.build();
    }
    this.failover = new TargetFailover(located, host, this.options.trunk, 'OPTIONS', this.log, {
      canMove: () => this.pending,
      resend: () => {
        // A target left while silent: its transaction stops retransmitting.
        if (this.tx?.state === TransactionState.Trying) this.tx.dispose();
        ({ request: this.request, branch: this.branch } = onNewBranch(this.request, (b) => host.via(this.protocol, b)));
        this.send();
      },
      giveUp: () => this.finish(this.failure),
    });
    this.send();
    // Timer F (64*T1, RFC 3261 17.1.2.2) ends the transaction anyway; a shorter ping timeout is the TU giving up
    // on it first (the transaction is dropped, a late response then matches nothing and is ignored).
    if (this.options.timeoutMs < 64 * host.timers.t1Ms) this.armTimeout(this.options.timeoutMs);
  }

  private send(): void {
    const destination = this.failover?.destination ?? this.info.destination;
    let tx: ClientTransaction | undefined;
    const user = targetUser(() => tx === this.tx, 'Timer F', {
      response: (r) => this.onResponse(r),
      failed: (reason, phrase) => this.failed({ outcome: reason, phrase }, reason),
    });
    this.log.debug({ destination: `${destination.host}:${destination.port}` }, 'OPTIONS ping sent');
    tx = this.options.host.startTransaction('non-invite', this.request, this.branch, destination, user, this.log);
    this.tx = tx;
    this.failover?.sent();
  }

  protected override abandon(): void {
    this.failover?.dispose();
    this.tx?.dispose();
  }

  private onResponse(response: ParsedResponse): void {
    this.failover?.heard();
    if (response.status < 200) return;
    const answer = { outcome: 'answered', status: response.status, phrase: response.reason } as const;
    if (response.status === 503) this.failed(answer, 'service_unavailable', retryAfterMs(response));
    else this.finish(answer);
  }

  /** It failed at its target: on to the next SRV target if one is left, else `failure` is the result. */
  private failed(failure: Omit<PingResult, 'callId'>, reason: FailoverReason, forMs?: number): void {
    this.failure = failure;
    this.failover?.failed(reason, failure.phrase ?? '', forMs);
  }
}
