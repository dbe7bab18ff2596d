/**
 * The embedded SIP stack: transports + client transaction table + UAC cores,
 * behind the CallOriginator interface.
 *
 *   const sip = new EmbeddedSipOriginator({
 *     listen: { host: '0.0.0.0', port: 5070, transports: ['udp', 'tcp'] },
 *     timers: { t1Ms: 500, t2Ms: 4000, t4Ms: 5000 },
 *     userAgent: 'flashverify',
 *     logger,
 *   });
 *   await sip.start();
 *   const call = sip.originate({ to, from, trunk, logger }, delegate);
 */
import type { Logger } from 'pino';
import type { CallDelegate, CallOriginator, OriginateRequest, OutboundCall, PingRequest, PingResult } from './call-originator.js';
import { systemClock, type Clock, type SipTimerConfig, type TimerHandle } from './clock.js';
import {
  getHeaders,
  hdr,
  REASON_PHRASES,
  serializeMessage,
  type ParsedMessage,
  type ParsedRequest,
  type SipHeader,
  type SipRequest,
  type Via,
} from './message.js';
import { InviteClientTransaction } from './transactions/invite-client-transaction.js';
import { NonInviteClientTransaction } from './transactions/non-invite-client-transaction.js';
import {
  clientTransactionKey,
  TransactionState,
  type ClientTransaction,
  type ClientTransactionUser,
  type TransactionTransport,
} from './transactions/transaction.js';
import { OptionsPing } from './options-ping.js';
import { splitCommaList } from './parser.js';
import { defaultTargetTimeoutMs, SipDnsError, SipLocator, type Located, type SipDnsOptions } from './sip-locator.js';
import type { FailoverEvent } from './srv-failover.js';
import { TcpTransport } from './tcp-transport.js';
import { destinationKey, type Destination, type InboundSource, type Transport, type TransportProtocol } from './transport.js';
import { ALLOW, KNOWN_UNHANDLED_METHODS, resolveTrunk, UacCall, type UacHost } from './uac.js';
import { TlsTransport, type TlsClientOptions } from './tls-transport.js';
import type { TrunkConfig } from '../config/schema.js';
import { trunkNeedsTls } from './trunk-transport.js';
import { UdpTransport } from './udp-transport.js';
import { errorMessage, hostForUri, maskUser, newTag } from './util.js';

export interface EmbeddedSipOriginatorOptions {
  listen: {
    /** Address to bind, e.g. "0.0.0.0", "127.0.0.1", "::1". */
    host: string;
    /** Port for UDP and TCP; 0 picks an ephemeral port (see {@link EmbeddedSipOriginator.localPort}). */
    port: number;
    /** Host placed in Via/Contact/SDP; defaults to `host`, or 127.0.0.1 when `host` is 0.0.0.0 (::1 for ::). */
    advertisedHost?: string;
    transports: ('udp' | 'tcp')[];
  };
  /**
   * An INVITE to a UDP destination larger than this (bytes) goes over TCP (RFC 3261 18.1.1), when `listen.transports`
   * has `tcp`; 0: never. Default 1300.
   */
  udpMaxRequestBytes?: number;
  /** The TLS client transport (`sips:` / `;transport=tls` trunks); verification on, 5 s handshake, 60 s idle unless told. */
  tls?: TlsClientOptions;
  /**
   * The configured trunks: the own TLS settings of those that have some (`tls`) are loaded at start, so that a bad
   * PEM stops the start naming the trunk. A trunk not given here has its settings loaded at its first call.
   */
  trunks?: readonly TrunkConfig[];
  timers: SipTimerConfig;
  userAgent: string;
  logger: Logger;
  /**
   * RFC 3263 SRV lookups for trunk host names without a port (sip-locator.ts) and failover between their targets
   * (srv-failover.ts); the system resolver, 60 s, 2 s, targets failed skipped 30 s, 4 s per target unless told.
   */
  dns?: SipDnsOptions;
  /** A request moved from a failed SRV target to the next one (`flashverify_srv_failovers_total`). */
  onFailover?: (event: FailoverEvent) => void;
  /** Timer source for every SIP timer; defaults to the global timers. */
  clock?: Clock;
}

const DEFAULT_TLS: TlsClientOptions = { insecureSkipVerify: false, handshakeTimeoutMs: 5000, idleTimeoutMs: 60_000 };
const DEFAULT_DNS: SipDnsOptions = { cacheMs: 60_000, timeoutMs: 2000 };

export class EmbeddedSipOriginator implements CallOriginator {
  private readonly options: EmbeddedSipOriginatorOptions;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly advertisedHost: string;
  private udp: UdpTransport | undefined;
  private tcp: TcpTransport | undefined;
  private tls: TlsTransport | undefined;
  /** Trunk names by destination key, for the log line of a transport error. */
  private readonly trunkNames = new Map<string, string>();
  private port = 0;
  private running = false;
  private readonly transactions = new Map<string, ClientTransaction>();
  private readonly byDestination = new Map<string, Set<ClientTransaction>>();
  private readonly calls = new Map<string, UacCall>();
  private readonly lingering = new Map<string, TimerHandle>();
  /** OPTIONS pings in flight (not calls: never in `calls`, never in activeCalls). */
  private readonly pings = new Set<OptionsPing>();
  private readonly host: UacHost;
  private readonly locator: SipLocator;

  constructor(options: EmbeddedSipOriginatorOptions) {
    this.options = options;
    this.logger = options.logger.child({ component: 'sip' });
    this.clock = options.clock ?? systemClock;
    const listenHost = options.listen.host;
    this.advertisedHost =
      options.listen.advertisedHost ?? (listenHost === '0.0.0.0' ? '127.0.0.1' : listenHost === '::' ? '::1' : listenHost);
    this.host = this.createHost();
    this.locator = new SipLocator(options.dns ?? DEFAULT_DNS, this.logger);
  }

  /** The bound SIP port (UDP and TCP share it); 0 before start(). */
  get localPort(): number {
    return this.port;
  }

  /** True between start() and stop(): the transports are bound (readiness). */
  get started(): boolean {
    return this.running;
  }

  /** Calls in progress (not those that ended and linger 64*T1 for late or retransmitted 2xx). */
  get activeCalls(): number {
    return this.calls.size - this.lingering.size;
  }

  async start(): Promise<void> {
    if (this.running) return;
    const { host, port, transports } = this.options.listen;
    const wantUdp = transports.includes('udp');
    const wantTcp = transports.includes('tcp');
    const events = {
      onMessage: (m: ParsedMessage, s: InboundSource) => this.onMessage(m, s),
      onDestinationError: (d: Destination, e: Error) => this.onDestinationError(d, e),
      destinationInUse: (d: Destination) => this.byDestination.has(destinationKey(d)) || [...this.calls.values()].some((c) => !c.isEnded && c.uses(d)),
      trunkOf: (d: Destination) => this.trunkNames.get(destinationKey(d)),
    };
    // First, as it reads the certificate files: a bad one stops the start before any socket is bound.
    const tls = new TlsTransport({ host, port: 0, logger: this.logger, events }, this.options.tls ?? DEFAULT_TLS);
    for (const trunk of this.options.trunks ?? []) prepareTls(tls, trunk);
    for (let attempt = 0; ; attempt++) {
      const udp = new UdpTransport({ host, port, logger: this.logger, events });
      // 8*T1 (4 s): a trunk that drops the SYN fails unreachable then (and a large INVITE goes over UDP), not at Timer B.
      const tcp = new TcpTransport({ host, port, logger: this.logger, events, connectTimeoutMs: 8 * this.options.timers.t1Ms });
      if (wantUdp) await udp.listen();
      const shared = wantUdp ? udp.localPort : port;
      if (wantTcp) {
        tcp.setPort(shared);
        try {
          await tcp.listen();
        } catch (err) {
          // Ephemeral UDP port already taken on TCP: try another one.
          await udp.close();
          if (port === 0 && wantUdp && attempt < 5) continue;
          throw err;
        }
      }
      this.udp = udp;
      this.tcp = tcp;
      this.tls = tls;
      this.port = wantUdp ? udp.localPort : tcp.localPort;
      break;
    }
    this.running = true;
    this.logger.info({ host, port: this.port, transports, advertised_host: this.advertisedHost }, 'SIP stack listening');
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    for (const call of [...this.calls.values()]) call.abort('SIP stack stopped', true);
    for (const ping of [...this.pings]) ping.abort('SIP stack stopped');
    for (const tx of [...this.transactions.values()]) tx.dispose();
    this.transactions.clear();
    this.byDestination.clear();
    for (const handle of this.lingering.values()) this.clock.clearTimeout(handle);
    this.lingering.clear();
    this.calls.clear();
    await Promise.all([this.udp?.close(), this.tcp?.close(), this.tls?.close()]);
    this.udp = undefined;
    this.tcp = undefined;
    this.tls = undefined;
    this.logger.info('SIP stack stopped');
  }

  /**
   * Start a call. Throws AppError only for invalid input (bad number, bad
   * trunk URI or header); network problems are reported through the delegate.
   */
  originate(request: OriginateRequest, delegate: CallDelegate): OutboundCall {
    if (this.tls !== undefined) prepareTls(this.tls, request.trunk);
    const call = new UacCall({
      host: this.host,
      to: request.to,
      from: request.from,
      trunk: request.trunk,
      sdp: request.sdp,
      delegate,
      logger: request.logger,
      callId: request.callId,
    });
    this.calls.set(call.callId, call);
    if (!this.running) {
      process.nextTick(() => call.abort('SIP stack not running', true));
      return call;
    }
    const info = resolveTrunk(request.trunk);
    if (info.srvName === undefined) {
      this.nameTrunk(request.trunk, info.destination);
      call.start();
    } else {
      this.locate(request.trunk).then(
        (located) => {
          if (this.running && !call.isEnded) call.start(located);
        },
        (err: unknown) => call.abort(errorMessage(err)),
      );
    }
    return call;
  }

  async ping(request: PingRequest): Promise<PingResult> {
    if (!this.running) return { outcome: 'not_sent', callId: '', phrase: 'SIP stack not running' };
    let ping: OptionsPing;
    try {
      if (this.tls !== undefined) prepareTls(this.tls, request.trunk);
      ping = new OptionsPing({ host: this.host, trunk: request.trunk, timeoutMs: request.timeoutMs, logger: request.logger });
    } catch (err) {
      return { outcome: 'not_sent', callId: '', phrase: errorMessage(err) };
    }
    let located: Located;
    try {
      located = await this.locate(request.trunk);
    } catch (err) {
      return { outcome: 'unreachable', callId: '', phrase: errorMessage(err) };
    }
    if (!this.running) return { outcome: 'not_sent', callId: '', phrase: 'SIP stack not running' };
    this.pings.add(ping);
    ping.start(located);
    return ping.result.finally(() => this.pings.delete(ping));
  }

  /**
   * Where a trunk's request goes first, and the SRV targets left after it (DNS SRV for a host name without a port);
   * a DNS failure is logged and thrown.
   */
  private async locate(trunk: TrunkConfig): Promise<Located> {
    const info = resolveTrunk(trunk);
    try {
      const located = await this.locator.locate(info.destination, info.srvName, info.transportFromDns ? { scheme: info.scheme } : undefined);
      this.nameTrunk(trunk, located.destination);
      return located;
    } catch (err) {
      const query = err instanceof SipDnsError ? err.query : undefined;
      this.logger.warn({ trunk: trunk.name, srv: info.srvName, query, err: errorMessage(err) }, 'SIP DNS lookup failed: the call (or ping) to this trunk fails unreachable');
      throw err;
    }
  }

  /**
   * TLS trunks whose last connection failed its handshake (certificate invalid, handshake timeout), with the reason;
   * empty when all are fine (readiness `sip_tls`).
   */
  get tlsFailures(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [key, reason] of this.tls?.failing ?? []) out[this.trunkNames.get(key) ?? key] = reason;
    return out;
  }

  /** `destination` is where `trunk`'s requests go now: its transport errors and TLS failures name the trunk. */
  private nameTrunk(trunk: TrunkConfig, destination: Destination): void {
    this.trunkNames.set(destinationKey(destination), trunk.name);
  }

  // ------------------------------------------------------------------ host services for UacCall

  private createHost(): UacHost {
    return {
      userAgent: this.options.userAgent,
      clock: this.clock,
      timers: this.options.timers,
      advertisedHost: this.advertisedHost,
      udpMaxRequestBytes: this.options.listen.transports.includes('tcp') ? (this.options.udpMaxRequestBytes ?? 1300) : 0,
      // RFC 5923 `alias` on a TLS Via: the trunk may send its requests to us over this connection (we open no TLS listener).
      via: (protocol, branch) =>
        `SIP/2.0/${protocol.toUpperCase()} ${hostForUri(this.advertisedHost)}:${this.port};branch=${branch};rport${protocol === 'tls' ? ';alias' : ''}`,
      // RFC 3261 8.1.1.8: a sips Request-URI takes a sips Contact; a sip: one over TLS says transport=tls.
      contact: (protocol, scheme = 'sip') =>
        `<${scheme}:${hostForUri(this.advertisedHost)}:${this.port}${protocol === 'udp' || scheme === 'sips' ? '' : `;transport=${protocol}`}>`,
      startTransaction: (kind, request, branch, destination, user, logger) =>
        this.startTransaction(kind, request, branch, destination, user, logger),
      sendStateless: (request, destination, logger) => {
        const transport = this.transportFor(destination.protocol);
        const data = serializeMessage(request);
        logOut(logger, data, destination);
        if (transport === undefined) return;
        transport.send(destination, data);
      },
      respond: (request, source, status, opts) => this.respond(request, source, status, opts?.headers, opts?.body),
      callEnded: (call, lingerMs) => this.callEnded(call, lingerMs),
      targetTimeoutMs: this.options.dns?.targetTimeoutMs ?? defaultTargetTimeoutMs(this.options.timers.t1Ms),
      destinationFailed: (destination, forMs) => this.locator.failed(destination, forMs),
      failedOver: (trunk, to, event) => {
        this.nameTrunk(trunk, to);
        this.options.onFailover?.(event);
      },
    };
  }

  private transportFor(protocol: TransportProtocol): Transport | undefined {
    return protocol === 'tcp' ? this.tcp : protocol === 'udp' ? this.udp : this.tls;
  }

  private startTransaction(
    kind: 'invite' | 'non-invite',
    request: SipRequest,
    branch: string,
    destination: Destination,
    user: ClientTransactionUser,
    logger: Logger,
  ): ClientTransaction {
    const transport = this.transportFor(destination.protocol);
    const destKey = destinationKey(destination);
    const txTransport: TransactionTransport = {
      reliable: destination.protocol !== 'udp',
      send: (data) => {
        logOut(logger, data, destination);
        if (transport === undefined) {
          process.nextTick(() => this.onDestinationError(destination, new Error('transport not available')));
          return;
        }
        transport.send(destination, data);
      },
    };
    const key = clientTransactionKey(branch, request.method);
    let tx: ClientTransaction | undefined;
    const onTerminated = (): void => {
      if (tx === undefined) return;
      if (this.transactions.get(key) === tx) this.transactions.delete(key);
      const set = this.byDestination.get(destKey);
      if (set !== undefined) {
        set.delete(tx);
        if (set.size === 0) this.byDestination.delete(destKey);
      }
    };
    const txOptions = {
      request,
      branch,
      transport: txTransport,
      user,
      clock: this.clock,
      timers: this.options.timers,
      logger,
      onTerminated,
    };
    tx = kind === 'invite' ? new InviteClientTransaction(txOptions) : new NonInviteClientTransaction(txOptions);
    this.transactions.set(key, tx);
    let set = this.byDestination.get(destKey);
    if (set === undefined) {
      set = new Set();
      this.byDestination.set(destKey, set);
    }
    set.add(tx);
    tx.start();
    return tx;
  }

  private callEnded(call: UacCall, lingerMs: number): void {
    if (!this.running || lingerMs <= 0) {
      this.calls.delete(call.callId);
      return;
    }
    const handle = this.clock.setTimeout(() => {
      this.lingering.delete(call.callId);
      if (this.calls.get(call.callId) === call) this.calls.delete(call.callId);
    }, lingerMs);
    this.lingering.set(call.callId, handle);
  }

  // ------------------------------------------------------------------ inbound

  private onDestinationError(destination: Destination, error: Error): void {
    const key = destinationKey(destination);
    const set = this.byDestination.get(key);
    const fields = { destination: key, trunk: this.trunkNames.get(key), err: error.message, transactions: set?.size ?? 0 };
    // TLS failures are a trunk's configuration or certificate problem: an operator must see them without debug logs.
    if (destination.protocol === 'tls') this.logger.warn(fields, 'SIP TLS transport error; calls on it fail unreachable');
    else this.logger.debug(fields, 'transport error');
    if (set === undefined) return;
    for (const tx of [...set]) {
      try {
        tx.onTransportError(error);
      } catch (err) {
        this.logger.error({ err: errorMessage(err) }, 'transport error handling failed');
      }
    }
  }

  private onMessage(message: ParsedMessage, source: InboundSource): void {
    try {
      if (this.logger.isLevelEnabled('debug')) {
        this.logger.debug(
          {
            dir: 'in',
            call_id: message.callId,
            start: message.kind === 'request' ? maskUser(`${message.method} ${message.uri}`) : `${message.status} ${message.reason}`,
            cseq: `${message.cseq.seq} ${message.cseq.method}`,
            remote: `${source.protocol}:${source.remoteAddress}:${source.remotePort}`,
          },
          'SIP message received',
        );
      }
      if (message.kind === 'response') {
        // RFC 3261 8.1.3.3: a response with more than one Via was meant for a proxy before us, not for this UAC.
        if (viaCount(message) > 1) {
          this.logger.debug({ call_id: message.callId, status: message.status }, 'response with more than one Via (RFC 3261 8.1.3.3); dropped');
          return;
        }
        const branch = message.via.branch;
        const tx = branch === undefined ? undefined : this.transactions.get(clientTransactionKey(branch, message.cseq.method));
        const inviteOk = message.cseq.method === 'INVITE' && message.status >= 200 && message.status < 300;
        // A 2xx to an INVITE whose transaction is Completed (a 487 or other final came first, e.g. from another
        // forked branch) goes to the call, which ACKs and BYEs it: the transaction only absorbs its own final.
        if (tx !== undefined && !(inviteOk && tx.state === TransactionState.Completed)) {
          tx.receiveResponse(message);
          return;
        }
        if (inviteOk) {
          const call = this.calls.get(message.callId);
          if (call !== undefined && message.from.tag === call.localTag) {
            call.on2xx(message);
            return;
          }
        }
        this.logger.debug({ call_id: message.callId, status: message.status }, 'response matches no transaction; dropped');
        return;
      }
      this.onRequest(message, source);
    } catch (err) {
      this.logger.error({ err: errorMessage(err), call_id: message.callId }, 'error handling SIP message');
    }
  }

  private onRequest(request: ParsedRequest, source: InboundSource): void {
    if (request.method === 'ACK') {
      // ACK for our 2xx to a re-INVITE (it ends that 2xx's retransmissions), or stray: never answered.
      const call = request.to.tag === undefined ? undefined : this.calls.get(request.callId);
      if (call !== undefined && call.matchesDialog(request.from.tag, request.to.tag!)) call.handleAck(request);
      return;
    }
    const toTag = request.to.tag;
    if (toTag !== undefined) {
      const call = this.calls.get(request.callId);
      if (call !== undefined && call.matchesDialog(request.from.tag, toTag)) {
        call.handleInDialogRequest(request, source);
      } else {
        this.respond(request, source, 481);
      }
      return;
    }
    // RFC 3261 8.2: the method first (8.2.1: 405, 501), then the header fields (8.2.2: 416, 420),
    // then the request itself. Max-Forwards is a proxy's check (16.3), not a UAS's.
    // A method we know and do not take here (an INVITE: we place calls, we take none; REGISTER, MESSAGE ...) is 405,
    // as in a dialog (uac.ts); one we do not know is 501. Both carry Allow.
    switch (request.method) {
      case 'OPTIONS':
      case 'BYE':
      case 'CANCEL':
        break;
      default:
        this.respond(request, source, request.method === 'INVITE' || KNOWN_UNHANDLED_METHODS.has(request.method) ? 405 : 501, [hdr('Allow', ALLOW)]);
        return;
    }
    if (!/^sips?:/i.test(request.uri)) {
      this.respond(request, source, 416); // 8.2.2.1 (RFC 4475 3.3.2, 3.3.3)
      return;
    }
    // 8.2.2.3: this UA supports no extension, so every option tag in Require is unsupported
    // (not for CANCEL; Proxy-Require is for proxies). RFC 4475 3.3.5.
    const required = request.method === 'CANCEL' ? [] : getHeaders(request, 'require').flatMap((v) => splitCommaList(v));
    if (required.length > 0) {
      this.respond(request, source, 420, [hdr('Unsupported', required.join(', '))]);
      return;
    }
    if (request.method === 'OPTIONS') {
      this.respond(request, source, 200, [hdr('Allow', ALLOW), hdr('Accept', 'application/sdp')]);
    } else {
      this.respond(request, source, 481);
    }
  }

  /** Build and send a response to an inbound request (RFC 3261 8.2.6.2). */
  private respond(
    request: ParsedRequest,
    source: InboundSource,
    status: number,
    extra: SipHeader[] = [],
    body?: string,
  ): Buffer {
    const headers: SipHeader[] = [];
    let top = true;
    for (const h of request.headers) {
      if (h.key !== 'via') continue;
      headers.push(top ? hdr('Via', stampVia(h.value, request.via, source)) : h);
      top = false;
    }
    for (const h of request.headers) {
      switch (h.key) {
        case 'from':
        case 'call-id':
        case 'cseq':
          headers.push(h);
          break;
        case 'to':
          headers.push(request.to.tag === undefined && status > 100 ? hdr('To', `${h.value};tag=${newTag()}`) : h);
          break;
        default:
          break;
      }
    }
    headers.push(hdr('Server', this.options.userAgent));
    headers.push(...extra);
    const reason = REASON_PHRASES[status] ?? 'Unknown';
    const data = serializeMessage({ kind: 'response', status, reason, headers, body });
    if (this.logger.isLevelEnabled('debug')) {
      this.logger.debug(
        { dir: 'out', call_id: request.callId, start: `${status} ${reason}`, cseq: `${request.cseq.seq} ${request.cseq.method}` },
        'SIP response sent',
      );
    }
    source.respond(data, request.via);
    return data;
  }
}

/** Loads a TLS trunk's own settings, if it has some (a ConfigError naming it when a file is no usable PEM). */
function prepareTls(tls: TlsTransport, trunk: TrunkConfig): void {
  // The object resolveTrunk puts in the trunk's destinations, which the transport finds the settings by.
  if (trunk.tls !== undefined && trunkNeedsTls(trunk.uri)) tls.prepare(trunk.name, trunk.tls);
}

/** The Via values of a message (the parser gives each value of a comma-separated line its own header). */
function viaCount(message: ParsedMessage): number {
  let n = 0;
  for (const h of message.headers) if (h.key === 'via') n++;
  return n;
}

/**
 * The top Via of a request as its response carries it, over any transport: RFC 3261 18.2.1 `received` when the
 * sent-by host is not the source address; RFC 3581 4: an `rport` without a value gets the source port, and then
 * `received` always, even when it is the sent-by host.
 */
function stampVia(value: string, via: Via, source: InboundSource): string {
  let v = value;
  const rport = 'rport' in via.params && via.params['rport'] === null;
  if (rport) v = v.replace(/;\s*rport(?=\s*(;|$))/i, `;rport=${source.remotePort}`);
  if ((rport || via.host !== source.remoteAddress) && via.params['received'] === undefined) v += `;received=${source.remoteAddress}`;
  return v;
}


function logOut(logger: Logger, data: Buffer, destination: Destination): void {
  if (!logger.isLevelEnabled('debug')) return;
  const eol = data.indexOf('\r\n');
  logger.debug(
    { dir: 'out', start: maskUser(data.toString('latin1', 0, eol === -1 ? Math.min(data.length, 120) : eol)), destination: destinationKey(destination) },
    'SIP message sent',
  );
}
