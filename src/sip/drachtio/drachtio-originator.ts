/**
 * The production signalling backend: CallOriginator over drachtio-srf,
 * connected to drachtio-server in inbound mode (the app dials the server).
 *
 *   const sip = new DrachtioOriginator({
 *     host: '127.0.0.1', port: 9022, secret: 'cymru',
 *     enablePing: true, pingIntervalMs: 10_000,
 *     reconnectMinMs: 1000, reconnectMaxMs: 30_000,
 *     callTimeoutMs: 32_000, userAgent: 'flashverify', logger,
 *   });
 *   await sip.start();             // resolves once connected (or after the first failed attempt)
 *   sip.isConnected();             // readiness
 *   const call = sip.originate({ to, from, trunk, logger }, delegate);
 *
 * What drachtio-srf does not do, and this class does:
 *  - connection handling (bounded reconnect, dead-peer detection): see
 *    DrachtioConnection;
 *  - settle calls in flight when the connection drops (drachtio-srf keeps
 *    their callbacks in a per-socket map it deletes on close: the createUAC
 *    promise never settles) → failed `unreachable` 'drachtio connection lost';
 *    an answered call whose dialog is lost that way is reported as ended by
 *    the network (onRemoteHangup), so a prompt in progress stops;
 *  - Timer B: drachtio-server reports an INVITE that got no response at all
 *    as a 408 after its own 32 s; a 408 that is the first response, or
 *    `callTimeoutMs` without any response, is `timeout`;
 *  - defer CANCEL until a provisional response arrived (RFC 3261 9.1), as the
 *    embedded stack does, and BYE a 2xx that crossed the CANCEL;
 *  - OPTIONS keep-alive pings (srf.request): a ping timeout of our own, and
 *    drachtio-server's own responses told from the trunk's (drachtioPingOutcome).
 */
import type { Logger } from 'pino';
import { AppError } from '../../errors/app-error.js';
import {
  answerToOffer,
  callDelegate,
  reportCallEnd,
  type CallDelegate,
  type CallFailure,
  type CallOriginator,
  type OriginateRequest,
  type OutboundCall,
  type PingOutcome,
  type PingRequest,
  type PingResult,
} from '../call-originator.js';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import { maskUser } from '../util.js';
import { PingAttempt, pingAddressing } from '../options-ping.js';
import { AUTH_NOT_CONFIGURED, AUTH_REFUSED, offeredChallenges } from '../digest.js';
import { callAddresses, dummySdp, failureReasonFor, resolveTrunk } from '../uac.js';
import { q850Cause } from '../reason.js';
import { errorMessage, newCallId } from '../util.js';
import { DrachtioConnection, type DrachtioConnectionOptions } from './drachtio-connection.js';
import {
  isSipError,
  type SrfClient,
  type SrfDialog,
  type SrfOutgoingRequest,
  type SrfResponse,
  type SrfSipMessage,
  type SrfUacOptions,
  type SrfUacRequest,
} from './srf-types.js';

/** The connection (host, port, secret, keepalive, reconnect back-off, logger, clock: DrachtioConnection) plus: */
export interface DrachtioOriginatorOptions extends DrachtioConnectionOptions {
  /** No response of any kind to the INVITE within this → `timeout` (and no final response this long after CANCEL → cancelled). */
  callTimeoutMs: number;
  userAgent: string;
  /** Address in the dummy SDP of trunks with `dummySdp` (default 127.0.0.1). */
  sdpHost?: string;
}

/** Phrase of the failure reported for calls in flight when the drachtio connection drops. */
export const CONNECTION_LOST = 'drachtio connection lost';

/** Whether a To header value carries a tag: every final response a far end (or a proxy for itself) sends does. */
function hasTag(to: string): boolean {
  return /;\s*tag=/i.test(to);
}

/**
 * A non-2xx final response as drachtio-srf reports it → the failure the
 * embedded stack would report (shared mapping), except two that
 * drachtio-server's transaction layer (sofia-sip) sends itself:
 *  - a 408 that is the first response to the INVITE: its Timer B
 *    (RFC 3261 17.1.1.2), i.e. no response from the far end at all → `timeout`;
 *  - a final response whose To (`to`, when known) has no tag: a UAS, and a proxy answering for itself, tag To in
 *    every response but 100 (RFC 3261 8.2.6.2, 16.7); sofia-sip's reply to a transport error (503: TCP refused,
 *    TLS failed, ICMP unreachable) keeps the request's untagged To → `unreachable`, as the embedded stack reports
 *    a transport error (the trunk's failure, route advanced, not a far end's 503).
 */
export function drachtioFailure(status: number, phrase: string | undefined, sawResponse: boolean, reasonHeader?: string, to?: string): CallFailure {
  const untagged = to !== undefined && !hasTag(to);
  const reason = status === 408 && !sawResponse ? 'timeout' : untagged ? 'unreachable' : failureReasonFor(status);
  const q850 = reasonHeader === undefined ? undefined : q850Cause([reasonHeader]);
  return { reason, status, ...(phrase === undefined ? {} : { phrase }), ...(q850 ? { q850 } : {}) };
}

/**
 * What a final response to a ping says, as drachtio-srf hands it up. drachtio-server's transaction layer
 * (sofia-sip) answers some pings itself, and those say nothing of the trunk being alive:
 *  - 408: sofia-sip's reply when Timer F fires. No SIP element sends a 408 to a non-INVITE request
 *    (RFC 4320 4.1), so every 408 to an OPTIONS is that one: `timeout`;
 *  - any other final response without a To tag: a UAS (and a proxy answering for itself) tags To in every
 *    response but 100 (RFC 3261 8.2.6.2, 16.7); sofia-sip's own reply to a transport error (a 503) carries the
 *    request's untagged To: `unreachable`.
 * Every other final response came from the far end: `answered`, whatever its status.
 */
export function drachtioPingOutcome(status: number, to: string | undefined): PingOutcome {
  if (status === 408) return 'timeout';
  if (!hasTag(to ?? '')) return 'unreachable';
  return 'answered';
}

const NUMBER_RE = /^\+?[0-9A-Za-z._*-]{1,32}$/;

/** What a call needs from the originator. */
interface CallHost {
  readonly clock: Clock;
  readonly callTimeoutMs: number;
  callEnded(call: DrachtioCall): void;
}

export class DrachtioOriginator implements CallOriginator {
  private readonly options: DrachtioOriginatorOptions;
  private readonly logger: Logger;
  private readonly connection: DrachtioConnection;
  private running = false;
  private readonly calls = new Set<DrachtioCall>();
  /** OPTIONS pings in flight (not calls: never in activeCalls). */
  private readonly pings = new Set<DrachtioPing>();
  private readonly host: CallHost;

  constructor(options: DrachtioOriginatorOptions) {
    this.options = options;
    this.logger = options.logger.child({ component: 'drachtio' });
    const clock = options.clock ?? systemClock;
    this.host = {
      clock,
      callTimeoutMs: options.callTimeoutMs,
      callEnded: (call) => this.calls.delete(call),
    };
    this.connection = new DrachtioConnection(
      { ...options, logger: this.logger, clock },
      {
        onDown: (wasUp) => {
          if (!wasUp) return;
          this.logger.error({ host: options.host, port: options.port, calls: this.calls.size }, CONNECTION_LOST);
          for (const call of [...this.calls]) call.abort(CONNECTION_LOST);
          // drachtio-srf never settles them either; the trunk is not to blame.
          for (const ping of [...this.pings]) ping.abort(CONNECTION_LOST);
        },
      },
    );
  }

  /** Readiness: authenticated to drachtio-server right now. */
  isConnected(): boolean {
    return this.connection.connected;
  }

  /** Calls not yet ended (for flashverify_active_calls). */
  get activeCalls(): number {
    return this.calls.size;
  }

  /**
   * Connect. Resolves once authenticated, or after the first attempt failed
   * (drachtio-server down: reconnecting goes on in the background, readiness
   * stays false); rejects when drachtio-server refuses the secret.
   */
  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    await this.connection.start();
  }

  /** Disconnect; calls in flight fail `unreachable`. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    for (const call of [...this.calls]) call.abort('SIP stack stopped');
    for (const ping of [...this.pings]) ping.abort('SIP stack stopped');
    this.connection.stop();
    this.logger.info('drachtio backend stopped');
  }

  originate(request: OriginateRequest, delegate: CallDelegate): OutboundCall {
    const call = new DrachtioCall(this.host, request, delegate, this.options);
    this.calls.add(call);
    const srf = this.connection.srf;
    if (!this.running || srf === undefined) {
      const why = this.running ? 'drachtio not connected' : 'SIP stack not running';
      process.nextTick(() => call.abort(why));
    } else {
      call.start(srf);
    }
    return call;
  }

  ping(request: PingRequest): Promise<PingResult> {
    const srf = this.connection.srf;
    if (!this.running || srf === undefined) {
      return Promise.resolve({ outcome: 'not_sent', callId: '', phrase: this.running ? 'drachtio not connected' : 'SIP stack not running' });
    }
    let ping: DrachtioPing;
    try {
      ping = new DrachtioPing(this.host.clock, request, this.options.userAgent);
    } catch (err) {
      return Promise.resolve({ outcome: 'not_sent', callId: '', phrase: errorMessage(err) });
    }
    this.pings.add(ping);
    ping.start(srf);
    return ping.result.finally(() => this.pings.delete(ping));
  }
}

/**
 * One OPTIONS keep-alive ping through drachtio-server (srf.request). drachtio-server runs the non-INVITE
 * transaction (retransmissions, Timer F); the ping's timeout is ours, so a lost connection or a silent
 * drachtio-server cannot hold it.
 */
class DrachtioPing extends PingAttempt {
  private readonly log: Logger;
  private readonly uri: string;
  private readonly headers: Record<string, string>;

  constructor(
    clock: Clock,
    private readonly request: PingRequest,
    userAgent: string,
  ) {
    super(clock);
    const info = resolveTrunk(request.trunk);
    const to = pingAddressing(info);
    this.log = request.logger.child({ call_id: this.callId });
    this.uri = to.requestUri;
    // drachtio-server adds Via, CSeq, Max-Forwards and the From tag (and keeps the Call-ID we give).
    this.headers = { 'Call-ID': this.callId, From: to.from, To: to.to, Accept: 'application/sdp', 'User-Agent': userAgent };
    for (const h of info.extraHeaders) this.headers[h.name] = h.value;
  }

  start(srf: SrfClient): void {
    const { timeoutMs } = this.request;
    this.log.debug({ uri: this.uri }, 'OPTIONS ping sent (drachtio)');
    this.armTimeout(timeoutMs);
    try {
      srf.request(this.uri, { method: 'OPTIONS', headers: this.headers }, (err, req?: SrfOutgoingRequest) => {
        // drachtio-server could not send it (NOK|<reason>: no transport for it, bad URI ...).
        if (err || req === undefined) return this.finish({ outcome: 'unreachable', phrase: errorMessage(err ?? 'not sent') });
        req.on('response', (res) => {
          if (res.status < 200) return;
          this.finish({ outcome: drachtioPingOutcome(res.status, res.get('To')), status: res.status, phrase: res.reason });
        });
      });
    } catch (err) {
      // drachtio-srf throws synchronously when it has no socket.
      this.finish({ outcome: 'not_sent', phrase: errorMessage(err) });
    }
  }

}

/** One outbound call through drachtio: the INVITE, its CANCEL, the dialog and its BYE. */
class DrachtioCall implements OutboundCall {
  private readonly host: CallHost;
  private readonly delegate: CallDelegate;
  private readonly log: Logger;
  private readonly uri: string;
  private readonly uacOptions: SrfUacOptions;
  private readonly localSdp: string | undefined;
  /** Our 200 to a re-INVITE without SDP offered (offerInReinvite): its ACK brings the answer. */
  private awaitingAnswer = false;
  private ownCallId: string;
  private req: SrfUacRequest | undefined;
  private dialog: SrfDialog | undefined;
  private outcome: 'answered' | 'failed' | 'cancelled' | undefined;
  private sawResponse = false;
  private cancelRequested = false;
  private cancelSent = false;
  private byePromise: Promise<void> | undefined;
  private resolveBye: (() => void) | undefined;
  private dialogUp = false;
  private ended = false;
  private timer: TimerHandle | undefined;
  private readonly startedAt = Date.now();
  private readonly trunk: OriginateRequest['trunk'];

  constructor(host: CallHost, request: OriginateRequest, delegate: CallDelegate, options: DrachtioOriginatorOptions) {
    if (!NUMBER_RE.test(request.to)) throw new AppError('sip_bad_number', `bad destination number ${JSON.stringify(request.to)}`);
    if (!NUMBER_RE.test(request.from)) throw new AppError('sip_bad_number', `bad CLI ${JSON.stringify(request.from)}`);
    this.host = host;
    this.delegate = delegate;
    this.trunk = request.trunk;
    const trunk = resolveTrunk(request.trunk);
    // drachtio-server keeps a Call-ID the app supplies; the echoed INVITE's Call-ID wins if it did not.
    this.ownCallId = request.callId ?? newCallId();
    this.log = request.logger.child({ call_id: this.ownCallId });
    const addresses = callAddresses(trunk, request.to, request.from);
    this.uri = addresses.requestUri;
    const cli = addresses.cli;
    this.localSdp = request.sdp ?? (request.trunk.dummySdp ? dummySdp(options.sdpHost ?? '127.0.0.1') : undefined);
    const headers: Record<string, string> = {
      'Call-ID': this.ownCallId,
      From: cli,
      To: addresses.to,
      'P-Asserted-Identity': cli,
      'User-Agent': options.userAgent,
    };
    for (const h of trunk.extraHeaders) headers[h.name] = h.value;
    if (this.localSdp !== undefined) headers['Content-Type'] = 'application/sdp';
    this.uacOptions = {
      headers,
      callingNumber: addresses.callingUser,
      ...(this.localSdp !== undefined ? { localSdp: this.localSdp } : {}),
      ...(request.trunk.auth !== undefined ? { auth: { username: request.trunk.auth.username, password: request.trunk.auth.password } } : {}),
    };
  }

  get callId(): string {
    return this.ownCallId;
  }

  start(srf: SrfClient): void {
    this.log.info({ uri: maskUser(this.uri) }, 'SIP call started (drachtio)');
    // Timer B equivalent: not even a 100 Trying within callTimeoutMs.
    this.arm(() => {
      if (this.sawResponse || this.outcome !== undefined) return;
      this.log.debug('no response to the INVITE; giving up');
      this.finish('failed', { reason: 'timeout', phrase: 'no response from drachtio-server / far end' });
      // The far end may still ring (its 100 Trying, if any, never reaches the app): CANCEL it. sofia sends the CANCEL
      // once the INVITE has had a provisional response, or never (RFC 3261 9.1); a 2xx now is BYEd (onDialog).
      this.sendCancel();
      this.maybeEnd();
    });
    let promise: Promise<SrfDialog>;
    try {
      promise = srf.createUAC(this.uri, this.uacOptions, {
        cbRequest: (err, req) => {
          if (err || req === undefined) return; // the promise rejects too
          this.req = req;
          const sent = req.get('Call-ID');
          if (sent !== undefined && sent !== this.ownCallId) this.ownCallId = sent;
          // A cancel asked for before the INVITE was even on its way.
          if (this.cancelRequested && this.outcome === undefined) this.sendCancel();
        },
        cbProvisional: (res) => this.onProvisional(res),
      });
    } catch (err) {
      // drachtio-srf throws synchronously when it has no socket.
      promise = Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    promise.then(
      (dialog) => this.onDialog(dialog),
      (err: unknown) => this.onRejected(err),
    );
  }

  // ---------------------------------------------------------------- OutboundCall

  cancel(): void {
    if (this.cancelRequested) return;
    this.cancelRequested = true;
    if (this.outcome !== undefined || this.ended) return;
    // At once, provisional response or not: drachtio-server never passes a 100 Trying up to the app (its sofia agent
    // has no NTATAG_PASS_100), and sofia itself holds a CANCEL until the INVITE has had a response below 200, 100
    // included (nta.c nta_outgoing_tcancel), as RFC 3261 9.1 asks. Waiting here for an 18x meant no CANCEL at all for
    // a far end that had sent only 100: its phone rang on after the call was reported ended.
    if (this.req !== undefined) this.sendCancel();
    else this.log.debug('cancel requested before the INVITE was sent; sent with it');
  }

  hangup(): Promise<void> {
    if (this.byePromise !== undefined) return this.byePromise;
    const dialog = this.dialog;
    if (dialog === undefined || !this.dialogUp) return Promise.resolve();
    this.byePromise = new Promise<void>((resolve) => {
      this.resolveBye = resolve;
    });
    this.log.debug('sending BYE');
    try {
      dialog.destroy(undefined, (err) => {
        if (err) this.log.debug({ err: errorMessage(err) }, 'BYE not sent / failed');
        this.byeDone();
      });
    } catch (err) {
      this.log.debug({ err: errorMessage(err) }, 'BYE not sent');
      this.byeDone();
    }
    return this.byePromise;
  }

  // ---------------------------------------------------------------- events from drachtio-srf

  private onProvisional(res: SrfResponse): void {
    if (this.ended) return;
    this.sawResponse = true;
    if (res.status > 100 && this.outcome === undefined) {
      const sdp = res.body === undefined || res.body === '' ? undefined : res.body;
      this.safe('onProvisional', () => this.delegate.onProvisional?.(res.status, res.reason, sdp));
    }
    if (this.cancelRequested && !this.cancelSent && this.outcome === undefined) this.sendCancel();
  }

  private onDialog(dialog: SrfDialog): void {
    this.sawResponse = true;
    this.dialog = dialog;
    this.dialogUp = true;
    dialog.on('destroy', () => this.onRemoteBye());
    // A re-INVITE whose SDP is not a plain refresh (drachtio-srf answers those itself): the media side answers its
    // offer (FreeSWITCH, after its own re-INVITE: the far end's media moved, hold); without one, our SDP as it was.
    dialog.on('modify', (req, res) => {
      const reply = (sdp: string | undefined): void => {
        if (sdp === undefined) {
          this.log.info('re-INVITE refused (488): its offer cannot be taken; the call keeps its media');
          res.send(488);
          return;
        }
        res.send(200, { body: sdp, headers: { 'Content-Type': 'application/sdp' } });
      };
      const onOffer = this.delegate.onOffer;
      if (!req.body) return reply(this.offerInReinvite());
      if (onOffer === undefined) return reply(this.localSdp);
      const answer = answerToOffer(onOffer, req.body, this.log);
      if (typeof answer === 'object') void answer.then(reply);
      else reply(answer);
    });
    // The ACK of a re-INVITE our 200 offered in (offerInReinvite) carries the answer.
    dialog.on('ack', (req) => this.onAck(req));
    if (this.outcome !== undefined || this.ended) {
      // A 2xx after we gave up (timeout, connection loss, cancel guard): ACKed by drachtio-srf, BYE it.
      this.log.info('2xx after the call outcome was reported; BYE');
      void this.hangup();
      return;
    }
    this.clearTimer();
    const crossed = this.cancelRequested;
    this.outcome = 'answered';
    this.log.info({ crossed_cancel: crossed }, 'SIP call answered');
    const sdp = dialog.remote.sdp === undefined || dialog.remote.sdp === '' ? undefined : dialog.remote.sdp;
    this.safe('onAnswered', () => this.delegate.onAnswered?.(sdp, crossed));
    // RFC 3261 9.1 / 15: the 2xx crossed our CANCEL: end the call at once.
    if (crossed) void this.hangup();
  }

  private onRejected(err: unknown): void {
    this.clearTimer();
    if (isSipError(err)) {
      const status = err.status;
      if ((status === 401 || status === 407) && !this.cancelRequested) {
        // drachtio-srf answers one challenge itself when the trunk has credentials; a 401/407 here is a refusal.
        const offered = err.res?.get(status === 407 ? 'Proxy-Authenticate' : 'WWW-Authenticate');
        const challenges = offeredChallenges(offered === undefined ? [] : [offered]);
        this.log.warn(
          { trunk: this.trunk.name, status, challenges },
          this.trunk.auth === undefined ? AUTH_NOT_CONFIGURED : AUTH_REFUSED,
        );
      }
      if (status === 487 && this.cancelRequested) this.finish('cancelled', undefined, 487);
      else this.finish('failed', drachtioFailure(status, err.reason ?? err.res?.reason, this.sawResponse, err.res?.get('Reason'), err.res?.get('To')));
    } else {
      this.finish('failed', { reason: 'unreachable', phrase: errorMessage(err) });
    }
    this.maybeEnd();
  }

  private onRemoteBye(): void {
    if (!this.dialogUp) return;
    this.dialogUp = false;
    if (this.byePromise === undefined) {
      this.log.info('remote hangup (BYE)');
      this.safe('onRemoteHangup', () => this.delegate.onRemoteHangup?.());
    }
    this.byeDone();
  }

  // ---------------------------------------------------------------- CANCEL

  private sendCancel(): void {
    const req = this.req;
    if (req === undefined || this.cancelSent) return;
    this.cancelSent = true;
    this.log.debug('sending CANCEL');
    try {
      req.cancel(undefined, (err) => {
        if (err) this.log.debug({ err: errorMessage(err) }, 'CANCEL not sent');
      });
    } catch (err) {
      this.log.debug({ err: errorMessage(err) }, 'CANCEL not sent');
    }
    // Nothing heard yet: sofia holds the CANCEL until a provisional comes (maybe never), and the INVITE's own timer
    // (callTimeoutMs, the Timer B equivalent) stays armed: no response at all is still a timeout, as on the embedded
    // stack. Else, RFC 3261 9.1: no final response to the INVITE long after the CANCEL: consider it cancelled.
    if (!this.sawResponse) return;
    this.arm(() => {
      if (this.outcome !== undefined) return;
      this.log.debug('no final response after CANCEL; abandoning INVITE');
      this.finish('cancelled');
      this.maybeEnd();
    });
  }

  // ---------------------------------------------------------------- end of call

  /** The drachtio connection is gone (or stop()): settle without waiting for anything. */
  abort(reason: string): void {
    if (this.ended) return;
    this.clearTimer();
    this.finish('failed', { reason: 'unreachable', phrase: reason, local: true });
    const lostDialog = this.dialogUp && this.outcome === 'answered' && this.byePromise === undefined;
    this.dialogUp = false;
    if (lostDialog) {
      // The dialog is gone with the connection (no BYE can be sent or received through it any more):
      // to the call's owner it ended from the network side, and a prompt in progress must stop.
      this.log.warn({ reason }, 'answered call lost with the drachtio connection');
      this.safe('onRemoteHangup', () => this.delegate.onRemoteHangup?.());
    }
    this.byeDone();
    this.maybeEnd();
  }

  private byeDone(): void {
    this.dialogUp = false;
    const resolve = this.resolveBye;
    this.resolveBye = undefined;
    resolve?.();
    this.maybeEnd();
  }

  /** `cancelFinal`: 487, or undefined when no final response came after the CANCEL. */
  private finish(outcome: 'failed' | 'cancelled', failure?: CallFailure, cancelFinal?: number): void {
    if (this.outcome !== undefined) return;
    this.outcome = outcome;
    reportCallEnd(this.log, this.delegate, outcome, failure, cancelFinal);
  }

  private maybeEnd(): void {
    if (this.ended || this.outcome === undefined || this.dialogUp || this.resolveBye !== undefined) return;
    this.ended = true;
    this.clearTimer();
    this.log.info({ outcome: this.outcome, duration_ms: Date.now() - this.startedAt }, 'SIP call ended');
    this.safe('onEnded', () => this.delegate.onEnded?.());
    this.host.callEnded(this);
  }

  private arm(fn: () => void): void {
    this.clearTimer();
    this.timer = this.host.clock.setTimeout(() => {
      this.timer = undefined;
      fn();
    }, this.host.callTimeoutMs);
  }

  private clearTimer(): void {
    if (this.timer !== undefined) this.host.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  /**
   * A re-INVITE without an offer (RFC 3261 14.2): our 200 carries the media side's offer (the call's media in the codec
   * it plays in), the ACK the answer (onAck). Without a media side that makes one: our SDP as it was, whose answer is
   * not applied.
   */
  private offerInReinvite(): string | undefined {
    if (this.delegate.onOfferWanted === undefined || this.delegate.onAnswer === undefined) return this.localSdp;
    try {
      const offer = this.delegate.onOfferWanted();
      this.awaitingAnswer = true;
      return offer;
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, 'no offer of the media side for a re-INVITE without one; our SDP offered as it was');
      return this.localSdp;
    }
  }

  /** The ACK of a re-INVITE: the answer to our offer, when our 200 made one; one that cannot be taken ends the call (BYE). */
  private onAck(req: SrfSipMessage): void {
    if (!this.awaitingAnswer) return;
    this.awaitingAnswer = false;
    if (!req.body) {
      this.log.warn('ACK without the answer to our offer (re-INVITE without SDP); the call keeps its media');
      return;
    }
    try {
      this.delegate.onAnswer?.(req.body);
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, 'the answer in the ACK cannot be taken; ending the call with BYE');
      void this.hangup();
      this.safe('onRemoteHangup', () => this.delegate.onRemoteHangup?.());
    }
  }

  private safe(name: string, fn: () => void): void {
    callDelegate(this.log, name, fn);
  }
}
