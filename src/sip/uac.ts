/**
 * UAC core for one outbound call (RFC 3261 8.1, 9.1, 12, 13.2, 15, 22).
 *
 * Owns the INVITE (and its digest retries), the CANCEL, the ACK for 2xx and
 * the BYE; reports to the CallDelegate. Transactions and transports are
 * provided by the stack through {@link UacHost}.
 */
import type { Logger } from 'pino';
import type { TrunkConfig } from '../config/schema.js';
import { AppError } from '../errors/app-error.js';
import { answerToOffer, callDelegate, reportCallEnd, type CallDelegate, type CallFailure, type CallFailureReason, type OutboundCall } from './call-originator.js';
import type { Clock, SipTimerConfig, TimerHandle } from './clock.js';
import { AUTH_NOT_CONFIGURED, AUTH_REFUSED, AUTH_UNUSABLE, computeDigest, offeredChallenges, usableChallenges, type DigestChallenge } from './digest.js';
import {
  getHeader,
  getHeaders,
  hdr,
  type ParsedRequest,
  type ParsedResponse,
  type SipHeader,
  type SipRequest,
  type Via,
} from './message.js';
import { isToken, parseNameAddr, parseSipUri, splitCommaList } from './parser.js';
import { q850Cause } from './reason.js';
import { numberUser, type NumberFormat } from './number-format.js';
import { srvNameFor, type Located } from './sip-locator.js';
import { onNewBranch, retryAfterMs, TargetFailover, targetUser, withTopVia, type FailoverHost, type FailoverReason } from './srv-failover.js';
import { trunkUriTransport, type TrunkUriTransport } from './trunk-transport.js';
import { TransactionState, type ClientTransaction, type ClientTransactionUser } from './transactions/transaction.js';
import { destinationKey, type Destination, type InboundSource, type TransportProtocol } from './transport.js';
import { errorMessage, hostForSocket, maskUser, newBranch, newCallId, newTag } from './util.js';

export const ALLOW = 'INVITE, ACK, CANCEL, BYE, OPTIONS';

/** What a call answers in its dialog (ACK is absorbed by the stack; CANCEL gets 481). */
const IN_DIALOG_METHODS = new Set(['BYE', 'OPTIONS', 'INVITE']);
/**
 * Methods of RFC 3261 and its common extensions that a call does not take in its dialog, nor the stack out of one:
 * 405 with Allow (RFC 3261 8.2.1). Any other method is not recognised: 501 (21.5.2).
 */
export const KNOWN_UNHANDLED_METHODS: ReadonlySet<string> = new Set(['REGISTER', 'PRACK', 'UPDATE', 'INFO', 'SUBSCRIBE', 'NOTIFY', 'REFER', 'MESSAGE', 'PUBLISH']);

/** Services the stack offers to a call (and, for RFC 3263 failover, to its INVITE and to OPTIONS pings). */
export interface UacHost extends FailoverHost {
  readonly userAgent: string;
  readonly clock: Clock;
  readonly timers: SipTimerConfig;
  /** Host placed in Via, Contact and the dummy SDP (IPv6 without brackets). */
  readonly advertisedHost: string;
  /** An INVITE to a UDP destination larger than this (bytes) goes over TCP (RFC 3261 18.1.1); 0: never. */
  readonly udpMaxRequestBytes: number;
  /** `SIP/2.0/UDP host:port;branch=...;rport` */
  via(protocol: TransportProtocol, branch: string): string;
  /** `<sip:host:port[;transport=tcp|tls]>`, or `<sips:host:port>` for the `sips` scheme. */
  contact(protocol: TransportProtocol, scheme?: 'sip' | 'sips'): string;
  /** Create, register and start a client transaction. */
  startTransaction(
    kind: 'invite' | 'non-invite',
    request: SipRequest,
    branch: string,
    destination: Destination,
    user: ClientTransactionUser,
    logger: Logger,
  ): ClientTransaction;
  /** Send a request outside any transaction (ACK for 2xx). */
  sendStateless(request: SipRequest, destination: Destination, logger: Logger): void;
  /** Answer an inbound request (RFC 3261 8.2.6); returns the response as sent. */
  respond(
    request: ParsedRequest,
    source: InboundSource,
    status: number,
    options?: { headers?: SipHeader[]; body?: string },
  ): Buffer;
  /** The call reported onEnded; `lingerMs` > 0 keeps it reachable for retransmissions (2xx, BYE). */
  callEnded(call: UacCall, lingerMs: number): void;
}

/** A trunk's URI and headers, checked and pre-computed once per TrunkConfig object. */
export interface TrunkInfo {
  /** `sips` asks for TLS on every hop (RFC 3261 26.2): Request-URI and To keep it. */
  readonly scheme: 'sip' | 'sips';
  /** As the URI reads (the default port when it names none); sip-locator.ts may send the calls elsewhere. */
  readonly destination: Destination;
  /** The DNS SRV name to look up first (RFC 3263 4.2), undefined for an IP address or an explicit port. */
  readonly srvName: string | undefined;
  /** The URI names no transport: NAPTR, then SRV of each transport, choose it (RFC 3263 4.1; sip-locator.ts). */
  readonly transportFromDns: boolean;
  /**
   * `<proxy;lr>` for a trunk with an outbound proxy (`sip.trunks[].proxy`): the Route of its out-of-dialog requests.
   * `destination`, `srvName` and `transportFromDns` are then the proxy's: requests go there.
   */
  readonly route: string | undefined;
  /** `host[:port]` as in the trunk URI (IPv6 in brackets). */
  readonly hostPort: string;
  /** `;transport=tcp` etc. when the trunk URI carried one, else ''. */
  readonly transportParam: string;
  /** RFC 3262 reliable provisional responses: what the INVITE says of 100rel (`sip.trunks[].rel100`). */
  readonly rel100: 'off' | 'supported' | 'required';
  /** How the numbers are written (number-format.ts). */
  readonly calledFormat: NumberFormat;
  readonly callingFormat: NumberFormat;
  readonly techPrefix: string;
  readonly fromDomain: string;
  readonly extraHeaders: readonly SipHeader[];
}

/** Headers the stack owns; a trunk may not override them. */
const RESERVED_HEADERS = new Set([
  'via',
  'from',
  'to',
  'call-id',
  'cseq',
  'contact',
  'content-length',
  'content-type',
  'max-forwards',
]);

const trunkCache = new WeakMap<TrunkConfig, TrunkInfo>();

/** A trunk setting that no call could use (AppError 'sip_trunk_invalid'), with the key under `sip.trunks[]` it is about. */
export class TrunkInvalidError extends AppError {
  constructor(
    readonly key: 'uri' | 'proxy' | 'headers' | 'fromDomain',
    message: string,
  ) {
    super('sip_trunk_invalid', message);
  }
}

/** Validate and pre-compute a trunk. Throws TrunkInvalidError on a bad URI or header. */
export function resolveTrunk(trunk: TrunkConfig): TrunkInfo {
  const cached = trunkCache.get(trunk);
  if (cached !== undefined) return cached;
  const { uri, transport } = hopUri(trunk.name, 'uri', trunk.uri);
  const extraHeaders: SipHeader[] = [];
  for (const [name, value] of Object.entries(trunk.headers ?? {})) {
    if (!isToken(name)) throw new TrunkInvalidError('headers', `trunk ${trunk.name}: bad header name ${JSON.stringify(name)}`);
    if (/[\r\n\0]/.test(value)) {
      throw new TrunkInvalidError('headers', `trunk ${trunk.name}: header ${name} contains CR/LF`);
    }
    const h = hdr(name, value);
    if (RESERVED_HEADERS.has(h.key)) throw new TrunkInvalidError('headers', `trunk ${trunk.name}: header ${name} is reserved`);
    extraHeaders.push({ key: h.key, name, value });
  }
  const fromDomain = trunk.fromDomain ?? uri.host;
  if (/[\s<>;@"]/.test(fromDomain)) throw new TrunkInvalidError('fromDomain', `trunk ${trunk.name}: bad fromDomain`);
  const param = uri.params['transport'];
  // The next hop: the outbound proxy when there is one (RFC 3261 8.1.2: the Route set's first URI), else the trunk.
  const hop = trunk.proxy === undefined ? { uri, transport } : hopUri(trunk.name, 'proxy', trunk.proxy);
  const host = hostForSocket(hop.uri.host);
  const info: TrunkInfo = {
    scheme: transport.scheme,
    destination: {
      protocol: hop.transport.transport,
      host,
      port: hop.uri.port ?? hop.transport.defaultPort,
      ...(hop.transport.transport === 'tls' && trunk.tls !== undefined ? { tls: trunk.tls } : {}),
    },
    srvName: srvNameFor(hop.transport.transport, host, hop.uri.port !== undefined),
    transportFromDns: hop.uri.params['transport'] === undefined,
    route: trunk.proxy === undefined ? undefined : `<${loose(trunk.proxy)}>`,
    hostPort: uri.port === undefined ? uri.host : `${uri.host}:${uri.port}`,
    transportParam: typeof param === 'string' ? `;transport=${param.toLowerCase()}` : '',
    rel100: trunk.rel100 ?? 'off',
    calledFormat: trunk.calledNumberFormat ?? 'e164',
    callingFormat: trunk.callingNumberFormat ?? 'e164',
    techPrefix: trunk.techPrefix ?? '',
    fromDomain,
    extraHeaders,
  };
  trunkCache.set(trunk, info);
  return info;
}

/** Why a trunk cannot be used (resolveTrunk's refusal) and the key it is about, or undefined: checked at boot, not at its first call. */
export function trunkProblem(trunk: TrunkConfig): TrunkInvalidError | undefined {
  try {
    resolveTrunk(trunk);
    return undefined;
  } catch (err) {
    if (err instanceof TrunkInvalidError) return err;
    throw err;
  }
}

/** The URI of a Contact or Record-Route value when in-dialog requests can be sent to it (a SIP URI, a port not 0). */
function usable(value: string): string | undefined {
  const uri = parseNameAddr(value)?.uri;
  return uri !== undefined && parseSipUri(uri) !== undefined ? uri : undefined;
}

const NUMBER_RE = /^\+?[0-9A-Za-z._*-]{1,32}$/;

/** A trunk's `uri` or `proxy`, parsed, with its transport; TrunkInvalidError naming the key when unusable. */
function hopUri(trunkName: string, key: 'uri' | 'proxy', text: string): { uri: NonNullable<ReturnType<typeof parseSipUri>>; transport: TrunkUriTransport } {
  const uri = parseSipUri(text);
  if (uri !== undefined && uri.user !== undefined) {
    throw new TrunkInvalidError(
      key,
      `trunk ${trunkName}: ${key} has a user part ("${uri.user}@"); the user part of each INVITE's Request-URI is the number called, so give sip:host[:port] (a digest username goes in auth.username, a carrier's routing prefix in techPrefix)`,
    );
  }
  if (uri === undefined || uri.port === 0) {
    throw new TrunkInvalidError(key, `trunk ${trunkName}: ${key} must look like sip:host[:port][;transport=udp|tcp|tls] or sips:host[:port], the port from 1 to 65535`);
  }
  const transport = trunkUriTransport(uri.scheme, uri.params['transport'] ?? undefined);
  if (typeof transport === 'string') throw new TrunkInvalidError(key, `trunk ${trunkName}: ${key === 'uri' ? '' : 'proxy: '}${transport}`);
  return { uri, transport };
}

/** The proxy URI with `;lr` (RFC 3261 16.12: a loose router; our requests keep their Request-URI). */
function loose(proxy: string): string {
  return /;lr(?=[;?]|$)/i.test(proxy) ? proxy : `${proxy};lr`;
}

/**
 * A call's Request-URI, To and caller URI (From, P-Asserted-Identity) for `to` and `from` (E.164), written as the
 * trunk wants its numbers (number-format.ts). Both backends build their INVITEs from these.
 */
export function callAddresses(info: TrunkInfo, to: string, from: string): { requestUri: string; to: string; cli: string; callingUser: string } {
  const called = numberUser(to, info.calledFormat, info.techPrefix);
  const calling = numberUser(from, info.callingFormat);
  const calledUri = `${info.scheme}:${called.user}@${info.hostPort}${called.phone ? ';user=phone' : ''}`;
  return {
    requestUri: calledUri + info.transportParam,
    to: `<${calledUri}>`,
    cli: `<sip:${calling.user}@${info.fromDomain}${calling.phone ? ';user=phone' : ''}>`,
    /** The caller ID as the trunk wants it written (the user part of `cli`). */
    callingUser: calling.user,
  };
}

/** Map a non-2xx final response to a failure reason. */
export function failureReasonFor(status: number): CallFailureReason {
  if (status >= 300 && status < 400) return 'redirected';
  switch (status) {
    case 486:
    case 600:
      return 'busy';
    case 603:
      return 'declined';
    case 404:
    case 604:
      return 'not_found';
    case 480:
      return 'unavailable';
    default:
      return 'rejected';
  }
}

/** Minimal SDP offer for carriers that reject offer-less INVITEs: one PCMU audio stream. */
export function dummySdp(host: string): string {
  return (
    sdpSessionHead(host) +
    'm=audio 40000 RTP/AVP 0\r\n' +
    'a=rtpmap:0 PCMU/8000\r\n' +
    'a=sendrecv\r\n'
  );
}

/**
 * The SDP answer that declines every stream of `offer` (RFC 3264 §6: same m-lines, in order, port 0), for the ACK
 * of a 2xx that carries an offer to an INVITE that had none (RFC 3261 §13.2.2.4: that ACK MUST carry an answer). A
 * flash call never takes the media; a strict B2BUA otherwise tears the call down itself, racing our BYE.
 */
export function declineAllSdp(offer: string, host: string): string {
  const mLines = offer
    .split(/\r?\n/)
    .filter((l) => l.startsWith('m='))
    .map((l) => {
      const [media = 'audio', , proto = 'RTP/AVP', fmt = '0'] = l.slice(2).trim().split(/\s+/);
      return `m=${media} 0 ${proto} ${fmt}\r\n`;
    });
  return sdpSessionHead(host) + mLines.join('');
}

/** v=, o=, s=, c= and t= of an SDP body of ours, for `host` (IPv4 or IPv6). */
function sdpSessionHead(host: string): string {
  const ip = host.includes(':') ? 'IP6' : 'IP4';
  const sess = Math.floor(Date.now() / 1000);
  return `v=0\r\no=flashverify ${sess} ${sess} IN ${ip} ${host}\r\ns=flashverify\r\nc=IN ${ip} ${host}\r\nt=0 0\r\n`;
}

/** The delegate of a call that has ended: nothing is reported any more, and nothing of the caller is kept. */
const ENDED_DELEGATE: CallDelegate = {};

type CallState = 'inviting' | 'early' | 'confirmed' | 'terminated';

interface Dialog {
  readonly remoteTag: string;
  /** Route header values for in-dialog requests, in order (RFC 12.1.2: Record-Route reversed). */
  readonly routeSet: string[];
  remoteTarget: string;
  /** CSeq number of the last request the far end sent in the dialog; undefined until the first (RFC 3261 12.1.2). */
  remoteCseq: number | undefined;
  readonly ackRequest: SipRequest;
  readonly ackDestination: Destination;
}

interface AuthEntry {
  header: 'Authorization' | 'Proxy-Authorization';
  challenge: DigestChallenge;
  nc: number;
}

/** How many digest retries one call may make, stale nonces included. */
const MAX_AUTH_RETRIES = 3;

export interface UacCallOptions {
  host: UacHost;
  to: string;
  from: string;
  trunk: TrunkConfig;
  sdp: string | undefined;
  delegate: CallDelegate;
  logger: Logger;
  callId?: string | undefined;
}

export class UacCall implements OutboundCall {
  readonly callId: string;
  readonly localTag: string;
  private readonly host: UacHost;
  private delegate: CallDelegate;
  private readonly log: Logger;
  private readonly trunk: TrunkConfig;
  private readonly trunkInfo: TrunkInfo;
  /** Where the INVITE goes (the trunk's destination, or the SRV target DNS chose), and goes next when it fails there. */
  private failover: TargetFailover | undefined;
  /** The trunk URI's transport until start(): then the one DNS chose (RFC 3263 4.1), which every request of the call uses. */
  private protocol: TransportProtocol;
  private readonly requestUri: string;
  private readonly fromValue: string;
  private readonly toValue: string;
  private readonly pai: string;
  /** Our SDP offer (also the answer to a re-INVITE). */
  private readonly localSdp: string | undefined;

  private state: CallState = 'inviting';
  private outcome: 'answered' | 'failed' | 'cancelled' | undefined;
  /** CSeq number of the current INVITE (incremented by digest retries). */
  private inviteCseq = 1;
  /** Highest CSeq number used in this dialog (BYE takes the next). */
  private lastCseq = 1;
  private inviteRequest: SipRequest | undefined;
  private inviteBranch = '';
  private inviteTx: ClientTransaction | undefined;
  /** Branches of INVITEs sent to SRV targets the call moved away from: a late 2xx from one is ACKed and BYEd, not taken. */
  private readonly abandonedBranches = new Set<string>();
  private inviteOutstanding = false;
  /** Why the INVITE failed at its last target (reported when no target is left). */
  private inviteFailure: CallFailure | undefined;
  /** The INVITE's connection closed on an unreadable answer; the INVITE was cancelled for it (onUnreadableInvite). */
  private unreadable = false;
  /** The INVITE now outstanding went over TCP to its UDP destination's host and port: too large for UDP (18.1.1). */
  private inviteOverTcp = false;
  /** TCP was refused there: this call's INVITEs go over UDP, whatever their size. */
  private tcpRefused = false;
  private cancelRequested = false;
  private cancelSent = false;
  private cancelOutstanding = false;
  private cancelTx: ClientTransaction | undefined;
  private cancelGuard: TimerHandle | undefined;
  private byeOutstanding = false;
  private byeTx: ClientTransaction | undefined;
  private byePromise: Promise<void> | undefined;
  private resolveBye: (() => void) | undefined;
  private dialog: Dialog | undefined;
  /** Dialogs a 2xx made that the call does not keep (a forked extra 2xx, or one after the outcome), by remote tag: ACKed and BYEd once, their retransmissions only re-ACKed. */
  private readonly otherDialogs = new Map<string, Dialog>();
  /** RFC 3262: the RSeq of the last reliable provisional response PRACKed, per early dialog (remote tag). */
  private readonly rseqByTag = new Map<string, number>();
  /** Early dialogs whose offer (a reliable 1xx's SDP, our INVITE having none) was answered in a PRACK: their 2xx is no offer. */
  private readonly answeredInPrack = new Set<string>();
  /**
   * Early dialogs whose reliable 1xx answered our INVITE's offer (RFC 3262 5, RFC 3261 13.2.1: the answer is in the
   * first reliable non-failure message), by remote tag: their 2xx may come without SDP, and this is the answer.
   */
  private earlyAnswers: Map<string, string> | undefined;
  /** The SDP we last answered a re-INVITE's offer with (undefined: none yet, ours is the INVITE's). */
  private currentSdp: string | undefined;
  /** The CSeq of a re-INVITE whose answer the media side is still making (a media server asked first). */
  private reinviteAnswering: number | undefined;
  /** The re-INVITE last answered with a 2xx: its CSeq, the response as sent, retransmitted until its ACK (13.3.1.4). */
  private reinvite: { cseq: number; data: Buffer; source: InboundSource; via: Via; timer: TimerHandle | undefined } | undefined;
  /** The re-INVITE (CSeq) whose 200 carried our offer: its ACK brings the answer. */
  private awaitingAnswer: number | undefined;
  /** PRACK transactions not finished yet (disposed by abort()). */
  private readonly prackTxs = new Set<ClientTransaction>();
  private readonly auth = new Map<string, AuthEntry>();
  private authRetries = 0;
  private ended = false;
  private readonly startedAt = Date.now();

  constructor(options: UacCallOptions) {
    if (!NUMBER_RE.test(options.to)) throw new AppError('sip_bad_number', `bad destination number ${JSON.stringify(options.to)}`);
    if (!NUMBER_RE.test(options.from)) throw new AppError('sip_bad_number', `bad CLI ${JSON.stringify(options.from)}`);
    this.host = options.host;
    this.delegate = options.delegate;
    this.trunk = options.trunk;
    this.trunkInfo = resolveTrunk(options.trunk);
    this.protocol = this.trunkInfo.destination.protocol;
    this.callId = options.callId ?? newCallId();
    this.localTag = newTag();
    this.log = options.logger.child({ call_id: this.callId });
    const addresses = callAddresses(this.trunkInfo, options.to, options.from);
    this.requestUri = addresses.requestUri;
    this.fromValue = `${addresses.cli};tag=${this.localTag}`;
    this.pai = addresses.cli;
    this.toValue = addresses.to;
    this.localSdp = options.sdp ?? (options.trunk.dummySdp ? dummySdp(options.host.advertisedHost) : undefined);
  }

  /**
   * Send the first INVITE, to the target DNS SRV chose when there is one (same transport), else to the trunk URI's
   * destination; on a failure there, to the SRV targets left (RFC 3263 4.3, srv-failover.ts). Called once by the
   * stack, after registering the call.
   */
  start(located: Located = { destination: this.trunkInfo.destination }): void {
    const destination = located.destination;
    this.protocol = destination.protocol;
    this.failover = new TargetFailover(located, this.host, this.trunk, 'INVITE', this.log, {
      canMove: () => this.inviteOutstanding && this.outcome === undefined && !this.cancelRequested && !this.unreadable,
      resend: () => this.resendInvite(),
      giveUp: () => this.endInvite(),
    });
    this.log.info(
      { trunk: this.trunk.name, transport: this.protocol, destination: `${destination.host}:${destination.port}`, server_name: destination.serverName },
      'SIP call started',
    );
    this.sendInvite();
  }

  /** Where the INVITE goes now: the trunk's destination, or the SRV target the call is at. */
  private get destination(): Destination {
    return this.failover?.destination ?? this.trunkInfo.destination;
  }

  /** Where the INVITE outstanding went, and its CANCEL goes (9.1): `destination`, over TCP when it was too large for UDP. */
  private get inviteDestination(): Destination {
    const d = this.destination;
    return this.inviteOverTcp ? { protocol: 'tcp', host: d.host, port: d.port, ...(d.serverName !== undefined ? { serverName: d.serverName } : {}) } : d;
  }

  // ---------------------------------------------------------------- OutboundCall

  cancel(): void {
    if (this.cancelRequested) return;
    this.cancelRequested = true;
    if (this.outcome !== undefined || this.ended) return;
    if (this.state === 'early' && this.inviteOutstanding) {
      this.sendCancel();
    } else {
      this.log.debug('cancel requested before any provisional response; deferred (RFC 3261 9.1)');
    }
  }

  hangup(): Promise<void> {
    if (this.byePromise !== undefined) return this.byePromise;
    if (this.state !== 'confirmed' || this.dialog === undefined) return Promise.resolve();
    return this.sendBye();
  }

  // ---------------------------------------------------------------- INVITE

  private baseHeaders(branch: string, method: string, cseq: number): SipHeader[] {
    return [
      hdr('Via', this.host.via(this.protocol, branch)),
      hdr('Max-Forwards', '70'),
      hdr('From', this.fromValue),
      hdr('To', this.toValue),
      hdr('Call-ID', this.callId),
      hdr('CSeq', `${cseq} ${method}`),
    ];
  }

  private sendInvite(): void {
    const branch = newBranch();
    this.lastCseq = Math.max(this.lastCseq, this.inviteCseq);
    const headers = this.baseHeaders(branch, 'INVITE', this.inviteCseq);
    // An outbound proxy: the Route the CANCEL and the non-2xx ACK copy (RFC 3261 9.1, 17.1.1.3).
    if (this.trunkInfo.route !== undefined) headers.push(hdr('Route', this.trunkInfo.route));
    headers.push(
      hdr('Contact', this.host.contact(this.protocol, this.trunkInfo.scheme)),
      hdr('P-Asserted-Identity', this.pai),
      hdr('User-Agent', this.host.userAgent),
      hdr('Allow', ALLOW),
    );
    // RFC 3262 3: a UAC that may take reliable provisional responses says so; one that insists, requires it.
    if (this.trunkInfo.rel100 === 'supported') headers.push(hdr('Supported', '100rel'));
    else if (this.trunkInfo.rel100 === 'required') headers.push(hdr('Require', '100rel'));
    // qop=auth-int hashes the entity body (RFC 2617 3.2.2.3, RFC 8760): the SDP this INVITE carries.
    headers.push(...this.authorizationHeaders('INVITE', this.requestUri, this.localSdp));
    headers.push(...this.trunkInfo.extraHeaders);
    if (this.localSdp !== undefined) headers.push(hdr('Content-Type', 'application/sdp'));
    const request: SipRequest = { kind: 'request', method: 'INVITE', uri: this.requestUri, headers, body: this.localSdp };
    this.startInvite(request, branch);
  }

  /** The INVITE sent over TCP for its size could not go there (refused, reset, not connected in time): the same INVITE over UDP. */
  private inviteOverUdp(phrase: string): void {
    const invite = this.inviteRequest;
    if (invite === undefined) return;
    this.log.info({ trunk: this.trunk.name, err: phrase }, 'TCP not taken for the large INVITE: sent over UDP (RFC 3261 18.1.1)');
    this.tcpRefused = true;
    this.abandonedBranches.add(this.inviteBranch);
    const { request, branch } = onNewBranch(invite, (b) => this.host.via('udp', b));
    this.startInvite(request, branch);
  }

  /** RFC 3263 4.3: the same INVITE (Call-ID, From tag, CSeq, credentials) on a new branch, to the next SRV target. */
  private resendInvite(): void {
    const invite = this.inviteRequest;
    if (invite === undefined) return;
    const old = this.inviteTx;
    // A target left while silent: its transaction stops retransmitting, and a late 2xx from it is not the call's.
    if (old?.state === TransactionState.Calling) old.dispose();
    this.abandonedBranches.add(this.inviteBranch);
    const { request, branch } = onNewBranch(invite, (b) => this.host.via(this.protocol, b));
    this.startInvite(request, branch);
  }

  private startInvite(request: SipRequest, branch: string): void {
    // RFC 3261 18.1.1: a request over 1300 bytes (the path MTU unknown) goes over a congestion-controlled transport,
    // its top Via saying so; only the Via changes (the Contact keeps UDP for the dialog's requests).
    const max = this.host.udpMaxRequestBytes;
    const bytes = max > 0 && !this.tcpRefused && this.destination.protocol === 'udp' ? requestSize(request) : 0;
    this.inviteOverTcp = bytes > max;
    if (this.inviteOverTcp) {
      request = withTopVia(request, this.host.via('tcp', branch));
      this.log.info({ trunk: this.trunk.name, bytes, max_udp_bytes: max }, 'INVITE too large for UDP: sent over TCP (RFC 3261 18.1.1)');
    }
    this.inviteRequest = request;
    this.inviteBranch = branch;
    this.state = 'inviting';
    this.cancelSent = false;
    this.inviteOutstanding = true;
    let tx: ClientTransaction | undefined;
    const user = targetUser(() => tx === this.inviteTx, 'Timer B', {
      response: (r) => this.onInviteResponse(r),
      failed: (reason, phrase) => {
        // 18.1.1: TCP refused (or reset before any answer) where the INVITE went only for its size: UDP after all.
        if (this.inviteOverTcp && reason === 'unreachable' && this.outcome === undefined && !this.cancelRequested) this.inviteOverUdp(phrase);
        else this.inviteFailed({ reason, phrase }, reason);
      },
      unreadable: (phrase) => this.onUnreadableInvite(phrase),
    });
    tx = this.host.startTransaction('invite', request, branch, this.inviteDestination, user, this.log);
    this.inviteTx = tx;
    this.failover?.sent();
  }

  private onInviteResponse(response: ParsedResponse): void {
    const status = response.status;
    this.failover?.heard();
    if (status === 503 && !this.unreadable) {
      // RFC 3263 4.3: a 503 is a failure of this target, like no response at all (RFC 3261 21.5.4: try another).
      // Its Reason (Q.850 34, 38, 41: no circuit, network out of order, temporary failure) is the carrier's cause.
      const q850 = q850Cause(getHeaders(response, 'reason'));
      this.inviteFailed({ reason: failureReasonFor(status), status, phrase: response.reason, ...(q850 ? { q850 } : {}) }, 'service_unavailable', retryAfterMs(response));
      return;
    }
    if (status < 200) {
      if (this.state === 'inviting') this.state = 'early';
      if (status > 100 && this.takeProvisional(response)) this.safe('onProvisional', () => this.delegate.onProvisional?.(status, response.reason, response.body));
      if (this.cancelRequested && !this.cancelSent && this.inviteOutstanding) this.sendCancel();
      return;
    }
    this.inviteOutstanding = false;
    this.cancelGuard = this.clearGuard();
    if (status < 300) {
      this.on2xx(response);
      // A 2xx of another fork does not report, but it may be what the call was waiting for to end.
      this.maybeEnd();
      return;
    }
    if (status === 401 || status === 407) {
      const refused = this.tryAuthRetry(response);
      if (refused === true) return;
      if (refused !== undefined) this.log.warn({ trunk: this.trunk.name, status, challenges: offeredChallenges(getHeaders(response, status === 407 ? 'proxy-authenticate' : 'www-authenticate')) }, refused);
    }
    if (status === 420 || status === 421) this.warnExtension(response);
    if (status === 487 && this.cancelRequested) {
      this.finish('cancelled', undefined, 487);
    } else if (status === 487 && this.unreadable) {
      // Our own CANCEL's 487, not a refusal of the far end's: the call failed on what could not be read.
      this.finish('failed', { ...this.inviteFailure!, status });
    } else {
      const q850 = q850Cause(getHeaders(response, 'reason'));
      this.finish('failed', { reason: failureReasonFor(status), status, phrase: response.reason, ...(q850 ? { q850 } : {}), ...(this.unreadable ? { early: true as const } : {}) });
    }
    this.maybeEnd();
  }

  /**
   * The INVITE failed at its target: a transport error, Timer B, a 503 (`forMs`: its Retry-After). It goes to the
   * next SRV target if one is left (the call is still outstanding meanwhile), else the call fails with `failure`.
   */
  private inviteFailed(failure: CallFailure, reason: FailoverReason, forMs?: number): void {
    this.log.debug({ reason: failure.reason, status: failure.status, detail: failure.phrase }, 'INVITE failed at its target');
    this.inviteFailure = failure;
    // Until it has gone again, the INVITE has no provisional response: a CANCEL asked for meanwhile waits (9.1).
    this.state = 'inviting';
    this.failover?.failed(reason, failure.phrase ?? '', forMs);
  }

  /**
   * Over TCP or TLS, the far end answered the INVITE with something that could not be framed (no usable
   * Content-Length, a head over the limit) before any response was read, and the connection was closed for it. The
   * far end has the INVITE and may be ringing the phone: rather than fail it unreachable and leave it ringing (or send
   * it to another target), it is CANCELled at once, on a new connection (RFC 3261 9.1, 18.1.1), and the call fails
   * `unreachable` unless what is read later (on a connection either end opens, 18.2.2) says otherwise: a ringing 1xx
   * that makes it a delivery, a 2xx that answers it.
   */
  private onUnreadableInvite(phrase: string): void {
    if (this.outcome !== undefined) return;
    this.failover?.heard();
    this.unreadable = true;
    this.inviteFailure = { reason: 'unreachable', phrase: `${phrase}; INVITE cancelled`, early: true };
    this.state = 'early';
    this.log.warn({ trunk: this.trunk.name, err: phrase }, 'the far end answered the INVITE with unreadable SIP; CANCEL sent on a new connection');
    this.sendCancel();
  }

  /** No target left for the INVITE (or its CANCEL was asked for): the call fails with the last target's failure. */
  private endInvite(): void {
    if (this.outcome !== undefined) return;
    this.inviteOutstanding = false;
    this.cancelGuard = this.clearGuard();
    this.finish('failed', this.inviteFailure);
    this.maybeEnd();
  }

  /**
   * 401/407: answer the challenge with a new INVITE (RFC 3261 22.2), same Call-ID and From tag, CSeq+1: true. Else
   * why not, for the operator's warn line (the call fails `rejected` with the status), or undefined when nothing is
   * wrong with the trunk's settings (the call was being CANCELled, or its answer could not be read).
   */
  private tryAuthRetry(response: ParsedResponse): true | string | undefined {
    const credentials = this.trunk.auth;
    if (this.cancelRequested || this.unreadable) return undefined;
    if (credentials === undefined) return AUTH_NOT_CONFIGURED;
    if (this.authRetries >= MAX_AUTH_RETRIES) return AUTH_REFUSED;
    const proxy = response.status === 407;
    let usable = 0;
    for (const challenge of usableChallenges(getHeaders(response, proxy ? 'proxy-authenticate' : 'www-authenticate'))) {
      const key = (proxy ? 'p:' : 'w:') + challenge.realm;
      const previous = this.auth.get(key);
      // One answer per challenge; a repeated challenge is a rejection unless the nonce was merely stale.
      if (previous !== undefined && !challenge.stale) return AUTH_REFUSED;
      this.auth.set(key, { header: proxy ? 'Proxy-Authorization' : 'Authorization', challenge, nc: 0 });
      usable++;
    }
    if (usable === 0) return AUTH_UNUSABLE;
    this.authRetries++;
    this.inviteCseq = this.lastCseq + 1;
    this.log.debug({ status: response.status, cseq: this.inviteCseq }, 'answering digest challenge');
    this.sendInvite();
    return true;
  }

  private authorizationHeaders(method: string, uri: string, body?: string): SipHeader[] {
    const credentials = this.trunk.auth;
    if (credentials === undefined || this.auth.size === 0) return [];
    const out: SipHeader[] = [];
    for (const entry of this.auth.values()) {
      entry.nc++;
      const digest = computeDigest(entry.challenge, credentials, { method, uri, body }, { nc: entry.nc });
      out.push(hdr(entry.header, digest.header));
    }
    return out;
  }

  // ---------------------------------------------------------------- reliable provisional responses (RFC 3262)

  /**
   * Is this 1xx (101-199) one to act on? An unreliable one always is. A reliable one (`Require: 100rel`, an RSeq) is
   * PRACKed and acted on when it is the first of its early dialog or its RSeq is one more than the last; any other
   * (a retransmission, one out of order) is neither PRACKed nor processed further (RFC 3262 4). Reliable ones are
   * taken whatever the trunk's `rel100` says: a far end that sends one anyway still gets its PRACK.
   */
  private takeProvisional(response: ParsedResponse): boolean {
    const rseqText = getHeader(response, 'rseq');
    if (rseqText === undefined || !hasOptionTag(getHeaders(response, 'require'), '100rel')) return true;
    const rseq = /^\s*(\d{1,10})\s*$/.exec(rseqText) ? Number(rseqText) : NaN;
    const tag = response.to.tag;
    // RFC 3262 7.1: RSeq 1 to 2**31-1; a reliable 1xx makes an early dialog, so it carries a To tag.
    if (!(rseq >= 1 && rseq <= 2 ** 31 - 1) || tag === undefined) {
      this.log.debug({ status: response.status, rseq: rseqText, to_tag: tag }, 'reliable provisional response without a usable RSeq or To tag; taken as unreliable');
      return true;
    }
    const last = this.rseqByTag.get(tag);
    if (last !== undefined && rseq !== last + 1) {
      this.log.debug({ status: response.status, rseq, last_rseq: last }, 'reliable provisional response retransmitted or out of order; not PRACKed again');
      return false;
    }
    this.rseqByTag.set(tag, rseq);
    const answer = this.localSdp !== undefined && !this.earlyAnswers?.has(tag) ? sdpOf(response) : undefined;
    if (answer !== undefined) (this.earlyAnswers ??= new Map()).set(tag, answer);
    this.sendPrack(response, tag, rseq);
    return true;
  }

  /**
   * PRACK (RFC 3262 7.2) in the early dialog of `response`: to its Contact, along its Record-Route, CSeq the call's
   * next, RAck naming the response. When the response carries an offer (our INVITE had none), the PRACK carries the
   * answer, every stream declined (RFC 3262 5), as the ACK of a 2xx would.
   */
  private sendPrack(response: ParsedResponse, tag: string, rseq: number): void {
    const { routeSet, remoteTarget } = this.dialogRouting(response);
    const { uri, routes, destination } = this.inDialogRouting(routeSet, remoteTarget);
    const branch = newBranch();
    const cseq = ++this.lastCseq;
    const headers: SipHeader[] = [
      hdr('Via', this.host.via(destination.protocol, branch)),
      hdr('Max-Forwards', '70'),
      hdr('From', this.fromValue),
      hdr('To', getHeader(response, 'to') ?? this.toValue),
      hdr('Call-ID', this.callId),
      hdr('CSeq', `${cseq} PRACK`),
      hdr('RAck', `${rseq} ${response.cseq.seq} INVITE`),
    ];
    for (const r of routes) headers.push(hdr('Route', r));
    headers.push(hdr('User-Agent', this.host.userAgent));
    const offer = this.localSdp === undefined && !this.answeredInPrack.has(tag) ? sdpOf(response) : undefined;
    if (offer !== undefined) {
      this.answeredInPrack.add(tag);
      headers.push(hdr('Content-Type', 'application/sdp'));
    }
    const body = offer !== undefined ? declineAllSdp(offer, this.host.advertisedHost) : undefined;
    const request: SipRequest = { kind: 'request', method: 'PRACK', uri, headers, body };
    this.log.debug({ status: response.status, rseq, cseq, answer: body !== undefined }, 'sending PRACK');
    let tx: ClientTransaction | undefined;
    const done = (how: string, status?: number): void => {
      if (tx === undefined || !this.prackTxs.delete(tx)) return;
      if (how !== 'answered' || (status ?? 0) >= 300) this.log.debug({ rseq, how, status }, 'PRACK not accepted; the call goes on');
    };
    tx = this.host.startTransaction(
      'non-invite',
      request,
      branch,
      destination,
      {
        receiveResponse: (r) => {
          if (r.status >= 200) done('answered', r.status);
        },
        onRequestTimeout: () => done('timeout'),
        onTransportError: () => done('transport error'),
      },
      this.log,
    );
    this.prackTxs.add(tx);
  }

  /** 420 (our Require not supported) or 421 (the far end requires an extension): say which, and what to set. */
  private warnExtension(response: ParsedResponse): void {
    const tags = getHeaders(response, response.status === 420 ? 'unsupported' : 'require').join(', ');
    const rel100 = /\b100rel\b/i.test(tags);
    this.log.warn(
      { trunk: this.trunk.name, status: response.status, option_tags: tags || undefined },
      response.status === 421
        ? rel100
          ? 'the trunk requires reliable provisional responses (100rel): set sip.trunks[].rel100 to supported'
          : 'the trunk requires a SIP extension this engine does not offer'
        : rel100
          ? 'the trunk does not support 100rel, which sip.trunks[].rel100 required: set it to supported or off'
          : 'the trunk does not support an extension the INVITE required',
    );
  }

  // ---------------------------------------------------------------- CANCEL (RFC 3261 9.1)

  private sendCancel(): void {
    const invite = this.inviteRequest;
    if (invite === undefined || this.cancelSent) return;
    this.cancelSent = true;
    this.cancelOutstanding = true;
    const headers: SipHeader[] = [];
    let viaDone = false;
    for (const h of invite.headers) {
      switch (h.key) {
        case 'via':
          if (!viaDone) headers.push(h);
          viaDone = true;
          break;
        case 'max-forwards':
        case 'from':
        case 'to':
        case 'call-id':
        case 'route':
          headers.push(h);
          break;
        case 'cseq':
          headers.push(hdr('CSeq', `${this.inviteCseq} CANCEL`));
          break;
        default:
          break;
      }
    }
    headers.push(hdr('User-Agent', this.host.userAgent));
    const request: SipRequest = { kind: 'request', method: 'CANCEL', uri: invite.uri, headers, body: undefined };
    this.log.debug('sending CANCEL');
    this.startCancel(request, false);
    // 9.1: if no final response for the INVITE within 64*T1 of the CANCEL, consider it cancelled.
    this.cancelGuard = this.host.clock.setTimeout(() => this.cancelGuardExpired(), 64 * this.host.timers.t1Ms);
  }

  /**
   * The CANCEL's client transaction. It goes where the INVITE went (9.1), over TCP on a new connection when the
   * INVITE's is gone (18.1.1). A TCP connection lost before the CANCEL's final response: sent once more, on a new one.
   */
  private startCancel(request: SipRequest, resent: boolean): void {
    let tx: ClientTransaction | undefined;
    const done = (): void => {
      if (tx !== this.cancelTx) return;
      this.cancelOutstanding = false;
      this.maybeEnd();
    };
    const user: ClientTransactionUser = {
      receiveResponse: (r) => {
        if (r.status >= 200) done();
      },
      onRequestTimeout: done,
      onTransportError: (err) => {
        if (tx === this.cancelTx && !resent && this.inviteDestination.protocol !== 'udp' && this.inviteOutstanding) {
          this.log.info({ err: errorMessage(err) }, 'TCP connection lost before the CANCEL was answered; CANCEL sent again');
          this.startCancel(request, true);
          return;
        }
        done();
      },
    };
    tx = this.host.startTransaction('non-invite', request, this.inviteBranch, this.inviteDestination, user, this.log);
    this.cancelTx = tx;
  }

  /** RFC 3261 9.1: no final response to the INVITE 64*T1 after CANCEL: destroy the INVITE transaction. */
  private cancelGuardExpired(): void {
    this.cancelGuard = undefined;
    if (!this.inviteOutstanding) return;
    this.log.debug('no final response 64*T1 after CANCEL; abandoning INVITE');
    this.inviteOutstanding = false;
    const tx = this.inviteTx;
    this.inviteTx = undefined;
    tx?.dispose();
    if (this.unreadable && !this.cancelRequested) this.finish('failed', this.inviteFailure);
    else this.finish('cancelled');
    this.maybeEnd();
  }

  private clearGuard(): undefined {
    if (this.cancelGuard !== undefined) this.host.clock.clearTimeout(this.cancelGuard);
    return undefined;
  }

  // ---------------------------------------------------------------- 2xx, ACK, dialog

  /** A 2xx to our INVITE, from the transaction or (retransmission) straight from the stack. */
  on2xx(response: ParsedResponse): void {
    if (response.cseq.seq !== this.inviteCseq) {
      this.log.debug({ cseq: response.cseq.seq }, 'ignoring 2xx for an older INVITE');
      return;
    }
    const remoteTag = response.to.tag ?? '';
    const dialog = this.dialog;
    // 13.2.2.4: a retransmitted 2xx is ACKed again, nothing more.
    const known = dialog?.remoteTag === remoteTag ? dialog : this.otherDialogs.get(remoteTag);
    if (known !== undefined) {
      this.host.sendStateless(known.ackRequest, known.ackDestination, this.log);
      return;
    }
    const abandoned = response.via.branch !== undefined && this.abandonedBranches.has(response.via.branch);
    if (dialog !== undefined || this.outcome !== undefined || abandoned) {
      // A second dialog from a forking proxy, or a 2xx after we gave up on the INVITE (after its 487 on another
      // branch, 64*T1 after CANCEL, Timer B), or on the SRV target it left: ACK it, then BYE it, once; nothing to report.
      this.log.info(
        { remote_tag: remoteTag },
        dialog !== undefined
          ? 'extra 2xx from a forked INVITE; ACK + BYE'
          : this.outcome !== undefined
            ? '2xx after the call outcome was reported; ACK + BYE'
            : '2xx from an SRV target the INVITE moved away from; ACK + BYE',
      );
      const other = this.createDialog(response, remoteTag);
      this.otherDialogs.set(remoteTag, other);
      this.host.sendStateless(other.ackRequest, other.ackDestination, this.log);
      this.sendByeOn(other, () => undefined);
      return;
    }
    if (this.inviteOutstanding) {
      // The first 2xx reached us outside the INVITE transaction (its Via branch did not match, found by
      // Call-ID): it still ends the INVITE (RFC 3261 13.2.2.4, 17.1.1.2). Without this the transaction,
      // if it had seen a 1xx (no Timer B in Proceeding), would hold the call open for ever.
      this.inviteOutstanding = false;
      this.cancelGuard = this.clearGuard();
      const tx = this.inviteTx;
      this.inviteTx = undefined;
      tx?.dispose();
    }
    this.dialog = this.createDialog(response, remoteTag);
    this.host.sendStateless(this.dialog.ackRequest, this.dialog.ackDestination, this.log);
    this.state = 'confirmed';
    const crossed = this.cancelRequested;
    this.outcome = 'answered';
    this.log.info({ status: response.status, crossed_cancel: crossed }, 'SIP call answered');
    // The answer to our offer: the 2xx's SDP, else the one its early dialog's reliable 1xx carried (RFC 3262 5).
    const answer = response.body ? response.body : this.earlyAnswers?.get(remoteTag);
    this.safe('onAnswered', () => this.delegate.onAnswered?.(answer, crossed));
    // 9.1 / 15: the 2xx crossed our CANCEL: end the call at once.
    if (crossed && this.byePromise === undefined && this.state === 'confirmed') void this.sendBye();
    this.maybeEnd();
  }

  private createDialog(response: ParsedResponse, remoteTag: string): Dialog {
    const { routeSet, remoteTarget } = this.dialogRouting(response);
    const ackBranch = newBranch();
    const toValue = getHeader(response, 'to') ?? this.toValue;
    const { uri, routes, destination } = this.inDialogRouting(routeSet, remoteTarget);
    const headers: SipHeader[] = [
      hdr('Via', this.host.via(destination.protocol, ackBranch)),
      hdr('Max-Forwards', '70'),
      hdr('From', this.fromValue),
      hdr('To', toValue),
      hdr('Call-ID', this.callId),
      hdr('CSeq', `${this.inviteCseq} ACK`),
    ];
    for (const r of routes) headers.push(hdr('Route', r));
    // 22.1: the ACK for a 2xx carries the INVITE's credentials.
    const invite = this.inviteRequest;
    if (invite !== undefined) {
      for (const h of invite.headers) if (h.key === 'authorization' || h.key === 'proxy-authorization') headers.push(h);
    }
    headers.push(hdr('User-Agent', this.host.userAgent));
    // 13.2.2.4: a 2xx with an offer (our INVITE had none) is answered in the ACK: every stream declined. Not when a
    // reliable 1xx of this dialog made the offer and its PRACK answered it (RFC 3262 5): the 2xx's SDP is no offer.
    const offer = this.localSdp === undefined && !this.answeredInPrack.has(remoteTag) ? sdpOf(response) : undefined;
    if (offer !== undefined) headers.push(hdr('Content-Type', 'application/sdp'));
    const body = offer !== undefined ? declineAllSdp(offer, this.host.advertisedHost) : undefined;
    const ackRequest: SipRequest = { kind: 'request', method: 'ACK', uri, headers, body };
    return {
      remoteTag,
      routeSet,
      remoteTarget,
      remoteCseq: undefined,
      ackRequest,
      ackDestination: destination,
    };
  }

  /**
   * Request-URI, Route headers and next hop for an in-dialog request (RFC 3261 12.2.1.1):
   * loose routing when the first route has `lr`, strict routing otherwise.
   */
  private inDialogRouting(
    routeSet: readonly string[],
    remoteTarget: string,
  ): { uri: string; routes: string[]; destination: Destination } {
    const first = routeSet[0];
    if (first === undefined) {
      return { uri: remoteTarget, routes: [], destination: this.destinationFor(remoteTarget) };
    }
    const firstAddr = parseNameAddr(first);
    const firstUri = firstAddr?.uri ?? remoteTarget;
    const parsed = parseSipUri(firstUri);
    if (parsed !== undefined && 'lr' in parsed.params) {
      return { uri: remoteTarget, routes: [...routeSet], destination: this.destinationFor(firstUri) };
    }
    // Strict router: it becomes the Request-URI, the remote target goes last in Route.
    return {
      uri: firstUri,
      routes: [...routeSet.slice(1), `<${remoteTarget}>`],
      destination: this.destinationFor(firstUri),
    };
  }

  /**
   * The remote target and route set of a dialog from its response (RFC 3261 12.1.2). A Contact or Record-Route URI
   * that cannot be sent to (not a SIP URI, port 0) is left out with a warning rather than followed: the in-dialog
   * requests then go to the trunk (the Request-URI of our INVITE), never to a port Node refuses.
   */
  private dialogRouting(response: ParsedResponse): { routeSet: string[]; remoteTarget: string } {
    const routes = getHeaders(response, 'record-route').reverse();
    const routeSet = routes.filter((r) => usable(r) !== undefined);
    const contact = getHeader(response, 'contact');
    const target = contact === undefined ? undefined : usable(contact);
    if (routeSet.length < routes.length || (contact !== undefined && target === undefined)) {
      this.log.warn(
        // Masked: a Contact or Record-Route may carry the called number, as the Request-URI does.
        {
          status: response.status,
          contact: contact === undefined ? undefined : maskUser(contact),
          record_route: routes.map(maskUser),
          remote_target: maskUser(target ?? this.requestUri),
        },
        'unusable Contact or Record-Route URI in a response: left out (an unusable Contact: in-dialog requests go to the trunk)',
      );
    }
    return { routeSet, remoteTarget: target ?? this.requestUri };
  }

  /** Next hop for a URI; transport from its parameter, else the one the INVITE used. */
  private destinationFor(uri: string): Destination {
    const parsed = parseSipUri(uri);
    if (parsed === undefined) return this.destination;
    const t = (parsed.params['transport'] ?? '').toLowerCase();
    // RFC 3261 26.2.2: a sips target is reached over TLS whatever its transport parameter says (tcp: TLS over TCP).
    const protocol: TransportProtocol =
      parsed.scheme === 'sips' || t === 'tls' ? 'tls' : t === 'tcp' ? 'tcp' : t === 'udp' ? 'udp' : this.protocol;
    // The trunk's own TLS settings go with its dialog: an ACK or BYE to its Contact is verified as the INVITE was (and
    // to the same address, goes on the same connection).
    const tls = protocol === 'tls' ? this.destination.tls : undefined;
    return { protocol, host: hostForSocket(parsed.host), port: parsed.port ?? (protocol === 'tls' ? 5061 : 5060), ...(tls !== undefined ? { tls } : {}) };
  }

  // ---------------------------------------------------------------- BYE

  private sendBye(): Promise<void> {
    const dialog = this.dialog;
    if (dialog === undefined) return Promise.resolve();
    this.byeOutstanding = true;
    this.byePromise = new Promise<void>((resolve) => {
      this.resolveBye = resolve;
    });
    this.sendByeOn(dialog, () => {
      this.byeOutstanding = false;
      this.state = 'terminated';
      const resolve = this.resolveBye;
      this.resolveBye = undefined;
      resolve?.();
      this.maybeEnd();
    });
    return this.byePromise;
  }

  /** BYE on a dialog (ours or a forked extra); `onDone` when its transaction has a final outcome. */
  private sendByeOn(dialog: Dialog, onDone: () => void, retried = false): void {
    const cseq = ++this.lastCseq;
    const branch = newBranch();
    const { uri, routes, destination } = this.inDialogRouting(dialog.routeSet, dialog.remoteTarget);
    const headers: SipHeader[] = [
      hdr('Via', this.host.via(destination.protocol, branch)),
      hdr('Max-Forwards', '70'),
      hdr('From', this.fromValue),
      hdr('To', getHeader(dialog.ackRequest, 'to') ?? this.toValue),
      hdr('Call-ID', this.callId),
      hdr('CSeq', `${cseq} BYE`),
    ];
    for (const r of routes) headers.push(hdr('Route', r));
    if (retried) headers.push(...this.authorizationHeaders('BYE', uri));
    headers.push(hdr('User-Agent', this.host.userAgent));
    const request: SipRequest = { kind: 'request', method: 'BYE', uri, headers, body: undefined };
    this.log.debug({ cseq }, 'sending BYE');
    let finished = false;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      onDone();
    };
    const user: ClientTransactionUser = {
      receiveResponse: (r) => {
        if (r.status < 200) return;
        if ((r.status === 401 || r.status === 407) && !retried && this.trunk.auth !== undefined) {
          for (const challenge of usableChallenges(getHeaders(r, r.status === 407 ? 'proxy-authenticate' : 'www-authenticate'))) {
            const proxy = r.status === 407;
            this.auth.set((proxy ? 'p:' : 'w:') + challenge.realm, {
              header: proxy ? 'Proxy-Authorization' : 'Authorization',
              challenge,
              nc: 0,
            });
          }
          this.sendByeOn(dialog, finish, true);
          return;
        }
        finish();
      },
      onRequestTimeout: finish,
      onTransportError: finish,
    };
    this.byeTx = this.host.startTransaction('non-invite', request, branch, destination, user, this.log);
  }

  // ---------------------------------------------------------------- requests from the far end

  /** Does an in-dialog request (From tag = remote, To tag = ours) belong to this call's dialog? */
  matchesDialog(fromTag: string | undefined, toTag: string | undefined): boolean {
    return this.dialog !== undefined && toTag === this.localTag && fromTag === this.dialog.remoteTag;
  }

  /** In-dialog request from the far end (RFC 3261 12.2.2). ACK is absorbed by the stack. */
  handleInDialogRequest(request: ParsedRequest, source: InboundSource): void {
    const dialog = this.dialog;
    if (dialog === undefined) return; // matchesDialog() said yes: never
    if (request.method === 'CANCEL') {
      // 9.2: a CANCEL matching no server transaction gets 481. We keep none: a re-INVITE is answered at once.
      this.host.respond(request, source, 481);
      return;
    }
    if (!IN_DIALOG_METHODS.has(request.method)) {
      // 8.2.1, before any dialog state is touched (12.2.2: a rejected request changes nothing).
      this.host.respond(request, source, KNOWN_UNHANDLED_METHODS.has(request.method) ? 405 : 501, { headers: [hdr('Allow', ALLOW)] });
      return;
    }
    // 12.2.2: a CSeq lower than the remote sequence number is out of order: 500. An equal one is a retransmission
    // (no server transaction absorbs it here) and is answered again.
    if (dialog.remoteCseq !== undefined && request.cseq.seq < dialog.remoteCseq) {
      this.log.debug({ cseq: request.cseq.seq, remote_cseq: dialog.remoteCseq, method: request.method }, 'in-dialog request out of order');
      this.host.respond(request, source, 500);
      return;
    }
    dialog.remoteCseq = request.cseq.seq;
    switch (request.method) {
      case 'BYE': {
        this.host.respond(request, source, 200);
        if (this.state === 'confirmed' && !this.byeOutstanding) {
          this.state = 'terminated';
          this.log.info('remote hangup (BYE)');
          this.safe('onRemoteHangup', () => this.delegate.onRemoteHangup?.());
          this.maybeEnd();
        }
        return;
      }
      case 'OPTIONS':
        this.host.respond(request, source, 200, {
          headers: [hdr('Allow', ALLOW), hdr('Accept', 'application/sdp')],
        });
        return;
      case 'INVITE': {
        if (this.state !== 'confirmed') {
          this.host.respond(request, source, 481);
          return;
        }
        // A retransmission of the re-INVITE we answered: the same answer again, not a new offer; of one whose answer
        // the media side is still making: it comes when made.
        if (this.reinvite?.cseq === request.cseq.seq) {
          this.reinvite.source.respond(this.reinvite.data, request.via);
          return;
        }
        if (this.reinviteAnswering === request.cseq.seq) return;
        // Target refresh (12.2.2).
        const contact = getHeader(request, 'contact');
        const target = contact === undefined ? undefined : usable(contact);
        if (target !== undefined) dialog.remoteTarget = target;
        // An offer: the media side answers it (RFC 3264 8: the far end's media moved, hold, a refresh); without a
        // media side, the call's own SDP. No offer: ours, as the offer (the ACK brings the answer).
        const offer = sdpOf(request);
        if (offer === undefined) return this.offerInReinvite(request, source);
        if (this.delegate.onOffer === undefined) return this.answerReinvite(request, source, this.currentSdp ?? this.localSdp, false);
        const answer = answerToOffer(this.delegate.onOffer, offer, this.log);
        if (typeof answer === 'object') {
          const cseq = request.cseq.seq;
          this.reinviteAnswering = cseq;
          void answer.then((sdp) => {
            if (this.reinviteAnswering !== cseq) return;
            this.reinviteAnswering = undefined;
            if (this.state === 'confirmed') this.answerReinvite(request, source, sdp, true);
          });
          return;
        }
        this.answerReinvite(request, source, answer, true);
        return;
      }
    }
  }

  /**
   * A re-INVITE without an offer (RFC 3261 14.2): our 200 carries one, the media side's (the call's media in the codec
   * it plays in), and its ACK the answer (handleAck). Without a media side that makes one: the call's last SDP, whose
   * answer is not applied.
   */
  private offerInReinvite(request: ParsedRequest, source: InboundSource): void {
    let offer: string | undefined;
    if (this.delegate.onOfferWanted !== undefined && this.delegate.onAnswer !== undefined) {
      try {
        offer = this.delegate.onOfferWanted();
      } catch (err) {
        this.log.warn({ err: errorMessage(err) }, 'no offer of the media side for a re-INVITE without one; the call\'s last SDP offered');
      }
    }
    this.awaitingAnswer = offer === undefined ? undefined : request.cseq.seq;
    this.answerReinvite(request, source, offer ?? this.currentSdp ?? this.localSdp, offer !== undefined);
  }

  /** 200 with `sdp` (retransmitted until its ACK), or 488 without one: the call keeps its media. */
  private answerReinvite(request: ParsedRequest, source: InboundSource, sdp: string | undefined, offered: boolean): void {
    if (sdp === undefined) {
      this.log.info({ offer: offered }, 're-INVITE refused (488): its offer cannot be taken; the call keeps its media');
      this.host.respond(request, source, 488);
      return;
    }
    if (offered) this.currentSdp = sdp;
    const data = this.host.respond(request, source, 200, {
      headers: [hdr('Contact', this.host.contact(this.protocol, this.trunkInfo.scheme)), hdr('Allow', ALLOW), hdr('Content-Type', 'application/sdp')],
      body: sdp,
    });
    this.retransmitUntilAck(request, data, source);
  }

  /**
   * RFC 3261 13.3.1.4: no ACK for our 2xx to a re-INVITE within 64*T1 (UDP): "the dialog is confirmed, but the session
   * SHOULD be terminated ... with a BYE". The far end's media state is unknown: the call ends as a far-end hangup would
   * (the delegate's onRemoteHangup: playback stops), and we send the BYE.
   */
  private reinviteUnacknowledged(cseq: number): void {
    if (this.state !== 'confirmed' || this.byeOutstanding || this.byePromise !== undefined) return;
    this.log.warn({ cseq }, 'no ACK for our 2xx to the re-INVITE within 64*T1; ending the call with BYE (RFC 3261 13.3.1.4)');
    void this.sendBye();
    this.safe('onRemoteHangup', () => this.delegate.onRemoteHangup?.());
  }

  /**
   * RFC 3261 13.3.1.4: our 2xx to a re-INVITE is sent again at T1, doubling up to T2, until its ACK (handleAck) or
   * 64*T1 over UDP; a reliable transport carries it once, and its ACK is awaited as long.
   */
  private retransmitUntilAck(request: ParsedRequest, data: Buffer, source: InboundSource): void {
    this.stopReinviteRetransmits();
    const cseq = request.cseq.seq;
    const reinvite: NonNullable<typeof this.reinvite> = { cseq, data, source, via: request.via, timer: undefined };
    this.reinvite = reinvite;
    const { t1Ms, t2Ms } = this.host.timers;
    if (source.protocol !== 'udp') {
      // Sent once, but the ACK is awaited all the same: 13.3.1.4 holds whatever the transport.
      reinvite.timer = this.host.clock.setTimeout(() => {
        if (this.reinvite !== reinvite) return;
        reinvite.timer = undefined;
        this.reinviteUnacknowledged(cseq);
      }, 64 * t1Ms);
      return;
    }
    let waited = 0;
    const again = (interval: number): void => {
      reinvite.timer = this.host.clock.setTimeout(() => {
        if (this.reinvite !== reinvite) return;
        waited += interval;
        if (waited >= 64 * t1Ms) {
          reinvite.timer = undefined;
          this.reinviteUnacknowledged(cseq);
          return;
        }
        source.respond(data, reinvite.via);
        again(Math.min(interval * 2, t2Ms));
      }, interval);
    };
    again(t1Ms);
  }

  private stopReinviteRetransmits(): void {
    if (this.reinvite?.timer !== undefined) this.host.clock.clearTimeout(this.reinvite.timer);
    if (this.reinvite) this.reinvite.timer = undefined;
  }

  /**
   * An ACK in the dialog (the stack passes it on, unanswered): it ends the 2xx retransmissions of its re-INVITE, and
   * carries the answer when our 200 offered (offerInReinvite). An answer the media side cannot take ends the call
   * with BYE, as a far-end hangup would (RFC 3261 13.2.2.4 asks the same of a UAC given an offer it cannot take).
   */
  handleAck(request: ParsedRequest): void {
    if (this.reinvite?.cseq === request.cseq.seq) this.stopReinviteRetransmits();
    if (this.awaitingAnswer !== request.cseq.seq) return;
    this.awaitingAnswer = undefined;
    const answer = sdpOf(request);
    if (answer === undefined) {
      this.log.warn({ cseq: request.cseq.seq }, 'ACK without the answer to our offer (re-INVITE without SDP); the call keeps its media');
      return;
    }
    try {
      this.delegate.onAnswer?.(answer);
    } catch (err) {
      if (this.state !== 'confirmed' || this.byePromise !== undefined) return;
      this.log.warn({ err: errorMessage(err) }, 'the answer in the ACK cannot be taken; ending the call with BYE');
      void this.sendBye();
      this.safe('onRemoteHangup', () => this.delegate.onRemoteHangup?.());
    }
  }

  // ---------------------------------------------------------------- end of call

  /** Report the single outcome (onAnswered is reported in on2xx). `cancelFinal`: 487, or undefined when the CANCEL guard gave up. */
  private finish(outcome: 'failed' | 'cancelled', failure?: CallFailure, cancelFinal?: number): void {
    if (this.outcome !== undefined) return;
    this.outcome = outcome;
    if (this.state !== 'confirmed') this.state = 'terminated';
    reportCallEnd(this.log, this.delegate, outcome, failure, cancelFinal);
  }

  /**
   * onEnded once no transaction of the call awaits a final outcome and no
   * dialog is up. Transactions merely absorbing retransmissions (ICT
   * Completed / Timer D, NICT Completed / Timer K) do not hold the call.
   */
  private maybeEnd(): void {
    if (this.ended || this.outcome === undefined) return;
    if (this.inviteOutstanding || this.cancelOutstanding || this.byeOutstanding) return;
    if (this.state === 'confirmed') return;
    this.ended = true;
    this.state = 'terminated';
    this.stopReinviteRetransmits();
    this.log.info({ outcome: this.outcome, duration_ms: Date.now() - this.startedAt }, 'SIP call ended');
    this.safe('onEnded', () => this.delegate.onEnded?.());
    // Nothing more is reported: the caller's delegate (and all it holds) is let go.
    this.delegate = ENDED_DELEGATE;
    // Every call stays reachable for 64*T1: a 2xx that comes late (a forked branch answering after the 487, one
    // after the CANCEL guard or Timer B) is ACKed and BYEd, not left to ring into dead air (13.2.2.4); an
    // answered one's 2xx and BYE retransmissions are answered.
    this.host.callEnded(this, 64 * this.host.timers.t1Ms);
  }

  /**
   * Abandon every transaction; a call without outcome fails `unreachable`. `local`: the reason is this side's (the
   * stack stopping or not running), not the trunk's (its DNS lookup failed): CallFailure.local.
   */
  abort(reason: string, local = false): void {
    if (this.ended) return;
    this.cancelGuard = this.clearGuard();
    this.failover?.dispose();
    for (const tx of [this.inviteTx, this.cancelTx, this.byeTx, ...this.prackTxs]) tx?.dispose();
    this.prackTxs.clear();
    this.inviteOutstanding = false;
    this.cancelOutstanding = false;
    this.byeOutstanding = false;
    const resolve = this.resolveBye;
    this.resolveBye = undefined;
    resolve?.();
    this.finish('failed', { reason: 'unreachable', phrase: reason, ...(local ? { local: true as const } : {}) });
    this.state = 'terminated';
    this.maybeEnd();
  }

  /** Is `destination` where this call's requests go (the trunk, or the dialog's next hop)? */
  uses(destination: Destination): boolean {
    const key = destinationKey(destination);
    if (destinationKey(this.destination) === key || destinationKey(this.inviteDestination) === key) return true;
    return this.dialog !== undefined && destinationKey(this.dialog.ackDestination) === key;
  }

  get isEnded(): boolean {
    return this.ended;
  }

  private safe(name: string, fn: () => void): void {
    callDelegate(this.log, name, fn);
  }
}

/** The SDP body of a message, if it has one. */
function sdpOf(message: ParsedResponse | ParsedRequest): string | undefined {
  return message.body && /^application\/sdp\b/i.test(getHeader(message, 'content-type') ?? '') ? message.body : undefined;
}

/** Does any of these `Require` / `Supported` values list `tag` (option tags are case-insensitive, RFC 3261 19.2)? */
function hasOptionTag(values: readonly string[], tag: string): boolean {
  return values.some((v) => splitCommaList(v).some((t) => t.toLowerCase() === tag));
}

/**
 * The size of `request` on the wire, as serializeMessage writes it (start line, each header as `Name: value`, the
 * Content-Length it adds, the body), without writing it: checked for every INVITE to a UDP destination.
 */
function requestSize(request: SipRequest): number {
  const body = request.body === undefined ? 0 : Buffer.byteLength(request.body);
  let size = request.method.length + 1 + Buffer.byteLength(request.uri) + ' SIP/2.0\r\n'.length;
  for (const h of request.headers) if (h.key !== 'content-length') size += h.name.length + 2 + Buffer.byteLength(h.value) + 2;
  return size + 'Content-Length: \r\n\r\n'.length + String(body).length + body;
}
