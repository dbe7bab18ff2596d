/**
 * One OPTIONS keep-alive ping to a trunk (RFC 3261 11), out of any dialog: what Kamailio's dispatcher
 * (ds_ping_interval), a FreeSWITCH gateway `ping` or Asterisk `qualify` send to learn that a peer is alive
 * without placing a call.
 *
 * Any final response means the trunk answered, whatever its status: a 405 or 403 from an SBC that refuses
 * OPTIONS, a 401/407 (not answered with credentials: the challenge is the answer), a 5xx. Only silence
 * (the ping's timeout, or Timer F) and transport errors count against the trunk.
 */
import type { Logger } from 'pino';
import type { TrunkConfig } from '../config/schema.js';
import type { PingResult } from './call-originator.js';
import type { Clock, TimerHandle } from './clock.js';
import { hdr, type ParsedResponse, type SipHeader, type SipRequest } from './message.js';
import type { ClientTransaction, ClientTransactionUser } from './transactions/transaction.js';
import type { Destination } from './transport.js';
import { ALLOW, resolveTrunk, type TrunkInfo, type UacHost } from './uac.js';
import { errorMessage, newBranch, newCallId, newTag } from './util.js';

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
  host: Pick<UacHost, 'userAgent' | 'clock' | 'timers' | 'via' | 'contact' | 'startTransaction'>;
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
  private readonly request: SipRequest;
  private readonly branch = newBranch();
  private tx: ClientTransaction | undefined;

  constructor(options: OptionsPingOptions) {
    super(options.host.clock);
    this.options = options;
    this.info = resolveTrunk(options.trunk);
    this.log = options.logger.child({ call_id: this.callId });
    const { host } = options;
    const protocol = this.info.destination.protocol;
    const to = pingAddressing(this.info);
    const headers: SipHeader[] = [
      hdr('Via', host.via(protocol, this.branch)),
      hdr('Max-Forwards', '70'),
      hdr('From', `${to.from};tag=${newTag()}`),
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
    this.request = { kind: 'request', method: 'OPTIONS', uri: to.requestUri, headers, body: undefined };
  }

  /**
   * Send it, to `destination` when DNS SRV chose one, else to the trunk URI's. Resolves `result` once: final
   * response, timeout, transport error or abort().
   */
  start(destination: Destination = this.info.destination): void {
    const { host } = this.options;
    const user: ClientTransactionUser = {
      receiveResponse: (r) => this.onResponse(r),
      onRequestTimeout: () => this.finish({ outcome: 'timeout', phrase: 'Timer F expired' }),
      onTransportError: (err) => this.finish({ outcome: 'unreachable', phrase: errorMessage(err) }),
    };
    this.log.debug({ destination: `${destination.host}:${destination.port}` }, 'OPTIONS ping sent');
    this.tx = host.startTransaction('non-invite', this.request, this.branch, destination, user, this.log);
    // Timer F (64*T1, RFC 3261 17.1.2.2) ends the transaction anyway; a shorter ping timeout is the TU giving up
    // on it first (the transaction is dropped, a late response then matches nothing and is ignored).
    if (this.options.timeoutMs < 64 * host.timers.t1Ms) this.armTimeout(this.options.timeoutMs);
  }

  protected override abandon(): void {
    this.tx?.dispose();
  }

  private onResponse(response: ParsedResponse): void {
    if (response.status < 200) return;
    this.finish({ outcome: 'answered', status: response.status, phrase: response.reason });
  }
}
