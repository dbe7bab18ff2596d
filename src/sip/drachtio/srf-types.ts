/**
 * The part of drachtio-srf 5.x that the drachtio backend uses, typed from
 * what the library does (lib/srf.js, dialog.js, request.js, drachtio-agent.js)
 * rather than from the declarations it ships (lib/@types/index.d.ts), which
 * are wrong or missing for this use:
 *
 *  - `SrfConfig` lacks `enablePing`, `pingInterval`, `reconnect`, `tls`, `tags`;
 *    `connect()` is declared `Promise<void>` but returns the app (not a promise).
 *  - `CreateUACOptions` lacks `callingNumber`, `callingName`, `calledNumber`,
 *    `followRedirects`, `keepUriOnRedirect`, `method`.
 *  - `cbRequest` is declared `(req) => void`; it is called `(err, req)`.
 *  - `SrfRequest.cancel` is declared `(callback)` only; it is `(opts?, callback?)`
 *    and throws synchronously for a request the app did not send.
 *  - `Dialog` lacks `id` and `connected`; `remote.sdp` / `local.sdp` may be
 *    undefined (no SDP); 'destroy' passes `(req, reason)`.
 *  - `Srf.SipError` (thrown with `status`, `reason`, `res`) is not declared.
 *  - `request(uri, opts, callback)` (a request outside a dialog, e.g. OPTIONS) calls back `(err, req)` once
 *    drachtio-server sent it; the responses come as `req.on('response', (res, ack))`, every 1xx included.
 *  - the events are 'connect' `(err, hostport, serverVersion, localHostports)`,
 *    'close', 'reconnecting', 'error'; there is no 'disconnect' event.
 *
 * Module augmentation cannot replace wrong overloads, so this is a typed
 * wrapper: the one cast from the library's value to these interfaces is here
 * and nothing typed `any` leaves this file.
 */
import type { Socket } from 'node:net';
import SrfModule from 'drachtio-srf';

/** Options of `srf.connect()` (inbound connection to drachtio-server). */
export interface SrfConnectOptions {
  host: string;
  port: number;
  secret: string;
  /** Send a `ping` frame every `pingInterval` ms (drachtio-server >= 0.8.2). */
  enablePing?: boolean;
  /** 5 000 ..300 000 ms; drachtio-srf asserts on anything else. */
  pingInterval?: number;
  /**
   * drachtio-srf's own reconnect (lib/wire-protocol.js): delay 150 ms x 1.7^n,
   * capped by `retryMaxDelay`, stops after `maxAttempts` (1 = never retries).
   */
  reconnect?: { maxAttempts?: number; retryMaxDelay?: number; connectTimeout?: number };
  tags?: string[];
}

/** A parsed SIP message (lib/sip-parser/message.js); header names are case-insensitive. */
export interface SrfSipMessage {
  get(name: string): string | undefined;
  has(name: string): boolean;
  /** '' or undefined when there is no body. */
  readonly body: string | undefined;
}

/** The INVITE as drachtio-server sent it (Call-ID, tags and Via filled in by the server). */
export interface SrfUacRequest extends SrfSipMessage {
  readonly method: string;
  readonly uri: string;
  readonly stackTxnId: string;
  /** Sends CANCEL for this transaction; throws if the request was not sent by this app. */
  cancel(opts?: { headers?: Record<string, string> }, callback?: (err: Error | null | undefined) => void): void;
}

/** A response from the network. */
export interface SrfResponse extends SrfSipMessage {
  readonly status: number;
  readonly reason: string;
  /** 'network' for responses received from the far end. */
  readonly source: string;
}

/** An in-dialog request from the far end (e.g. a re-INVITE). */
export interface SrfInDialogRequest extends SrfSipMessage {
  readonly method: string;
}

/** The response object handed with an in-dialog request. */
export interface SrfServerResponse {
  send(status: number, opts?: { headers?: Record<string, string>; body?: string }): void;
}

export interface SrfDialog {
  /** drachtio-server's dialog id. */
  readonly id: string;
  readonly sip: { callId: string; localTag: string; remoteTag: string };
  readonly local: { uri: string; sdp: string | undefined; contact: string | undefined };
  readonly remote: { uri: string; sdp: string | undefined };
  readonly connected: boolean;
  /** BYE; the callback runs when the BYE got its response, or at once when it could not be sent. */
  destroy(opts: { headers?: Record<string, string> } | undefined, callback: (err: Error | null | undefined) => void): void;
  /** The far end sent BYE (answered 200 by drachtio-srf). */
  on(event: 'destroy', listener: (req: SrfSipMessage, reason?: string) => void): this;
  /** A re-INVITE whose SDP is not a refresh/hold/unhold: the app must answer it. */
  on(event: 'modify', listener: (req: SrfInDialogRequest, res: SrfServerResponse) => void): this;
  /** An ACK in the dialog (of a re-INVITE the far end sent): its body, when our 2xx offered, is the answer. */
  on(event: 'ack', listener: (req: SrfSipMessage) => void): this;
}

export interface SrfUacOptions {
  headers?: Record<string, string>;
  /** Sets From (and Contact) to `sip:<callingNumber>@localhost` unless given in headers; drachtio-server replaces `localhost`. */
  callingNumber?: string;
  calledNumber?: string;
  /** SDP offer; omitted → an offer-less INVITE (drachtio-srf then ACKs a 2xx offer back as recvonly). */
  localSdp?: string;
  proxy?: string;
  auth?: { username: string; password: string };
  followRedirects?: boolean;
}

export interface SrfUacCallbacks {
  /** The INVITE left (req: as sent), or could not be sent (err). */
  cbRequest?: (err: Error | null | undefined, req?: SrfUacRequest) => void;
  /** Every 1xx, 100 included. */
  cbProvisional?: (res: SrfResponse) => void;
}

/** A request outside a dialog (srf.request), as drachtio-server sent it. */
export interface SrfOutgoingRequest extends SrfSipMessage {
  readonly method: string;
  /** Each response from the network (drachtio-server's own 408 on Timer F too), 1xx included. */
  on(event: 'response', listener: (res: SrfResponse) => void): this;
}

/** Options of `srf.request()`. */
export interface SrfRequestOptions {
  method: string;
  headers?: Record<string, string>;
  body?: string;
}

/** One drachtio-srf instance, connected to one drachtio-server. */
export interface SrfClient {
  connect(opts: SrfConnectOptions): void;
  /** Ends the socket (only valid while a socket exists). */
  disconnect(): void;
  /** Resolves with the dialog on a 2xx; rejects with a SipError (non-2xx) or an Error (not sent). */
  createUAC(uri: string, opts: SrfUacOptions, callbacks: SrfUacCallbacks): Promise<SrfDialog>;
  /** Sends a request outside a dialog; `callback` once it was sent (req) or refused (err: drachtio-server's NOK reason). Throws without a socket. */
  request(uri: string, opts: SrfRequestOptions, callback: (err: Error | null | undefined, req?: SrfOutgoingRequest) => void): this;
  on(event: 'connect', listener: (err: Error | null | undefined, hostport?: string, serverVersion?: string | null) => void): this;
  on(event: 'close' | 'reconnecting', listener: () => void): this;
  on(event: 'error', listener: (err: Error) => void): this;
  removeAllListeners(): this;
}

/** A non-2xx final response, as drachtio-srf rejects createUAC with it. */
export interface SrfSipError extends Error {
  readonly status: number;
  readonly reason?: string;
  readonly res?: SrfResponse;
}

/**
 * drachtio-srf's wire layer under one Srf (lib/drachtio-agent.js `client`,
 * lib/wire-protocol.js `wp`), for the connection keepalive: drachtio-srf's own
 * `enablePing` sends `ping` frames but never checks that a pong comes back,
 * and refuses intervals under 5 s.
 */
export interface SrfWire {
  /** Sends one admin frame (e.g. `ping`); its message id, or undefined when there is no socket. */
  send(payload: string): string | undefined;
  /** Every frame drachtio-server sends, without the length prefix; returns the unsubscribe. */
  onFrame(listener: (payload: string) => void): () => void;
  /** Destroys the socket: drachtio-srf then emits 'close'. */
  destroy(): void;
}

/** The internals of drachtio-srf 5.0.29 that srfWire() reads (pinned version, see package.json). */
interface SrfInternals {
  _app?: {
    client?: {
      mapServer?: Map<Socket, unknown>;
      wp?: {
        send(socket: Socket, msg: string): string;
        on(event: 'msg', listener: (socket: Socket, msg: string) => void): unknown;
        removeListener(event: 'msg', listener: (socket: Socket, msg: string) => void): unknown;
      };
    };
  };
}

/** The wire layer of a connected Srf; undefined before connect(). */
export function srfWire(srf: SrfClient): SrfWire | undefined {
  const agent = (srf as unknown as SrfInternals)._app?.client;
  const wp = agent?.wp;
  const map = agent?.mapServer;
  if (wp === undefined || map === undefined) return undefined;
  // One inbound connection per Srf: the agent's only socket.
  const socket = (): Socket | undefined => map.keys().next().value;
  return {
    send(payload) {
      const s = socket();
      return s === undefined || s.destroyed ? undefined : wp.send(s, payload);
    },
    onFrame(listener) {
      const fn = (_socket: Socket, msg: string): void => listener(msg);
      wp.on('msg', fn);
      return () => {
        wp.removeListener('msg', fn);
      };
    },
    destroy() {
      socket()?.destroy();
    },
  };
}

const library = SrfModule as unknown as {
  new (): SrfClient;
  readonly SipError: abstract new (...args: never[]) => Error;
};

/** A new, unconnected drachtio-srf instance. */
export function createSrf(): SrfClient {
  return new library();
}

/** True for drachtio-srf's SipError (a non-2xx final response). */
export function isSipError(err: unknown): err is SrfSipError {
  return err instanceof library.SipError && typeof (err as { status?: unknown }).status === 'number';
}
