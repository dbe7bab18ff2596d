import { createServer } from 'node:net';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { MediaError } from '../sdp.js';

/**
 * A minimal typed face of drachtio-fsmrf 4.1.2 (and of drachtio-modesl 1.3,
 * the event-socket library it is built on): only what the FreeSWITCH media
 * backend uses. Neither package ships types; everything untyped stays in
 * this file.
 *
 * `connectMediaServer` replaces `Mrf#connect` because of three behaviours of
 * 4.1.2 / modesl 1.3 that a worker cannot live with:
 *  - a refused or dropped inbound connection starts modesl's own reconnect
 *    loop, which has no upper bound on attempts or delay, does not stop when
 *    `Mrf#connect` has already rejected (a leaked socket that keeps dialling),
 *    and after a reconnect does not re-subscribe to HEARTBEAT nor flush the
 *    callbacks of `api` commands lost with the old socket;
 *  - a wrong event-socket password emits only `esl::event::auth::fail`, so
 *    `Mrf#connect` never settles;
 *  - a FreeSWITCH without the `drachtio_mrf` sofia profile makes MediaServer
 *    throw inside a socket callback (an uncaught exception).
 * So we open the modesl connection ourselves with its reconnect disabled,
 * check auth and the profile, then hand it to fsmrf's own MediaServer class;
 * the player reconnects with a bounded back-off instead.
 */

/**
 * What fsmrf needs of drachtio-srf: `createUAC(uri, {headers, localSdp})`
 * (promise form) to INVITE FreeSWITCH. Any Srf connected to drachtio-server.
 */
export interface FsmrfSrf {
  createUAC(uri: string, opts: { headers?: Record<string, string>; localSdp?: string }): Promise<unknown>;
}

/** An ESL event or reply (modesl `Event`). */
export interface EslEvent {
  getHeader(name: string): string | undefined;
  getBody(): string;
}

type Listener = (...args: never[]) => void;

interface Emitter {
  on(event: string, fn: Listener): unknown;
  once(event: string, fn: Listener): unknown;
  removeListener(event: string, fn: Listener): unknown;
  removeAllListeners(event?: string): unknown;
}

/** modesl `Connection` (inbound: we dial FreeSWITCH on 8021). */
export interface EslConnection extends Emitter {
  socket: { remoteAddress?: string } | null;
  reconnectOpts: { maxAttempts?: number };
  initializeRetryVars(): void;
  connected(): boolean;
  api(command: string, cb: (res: EslEvent) => void): void;
  disconnect(): void;
}

interface EslConnectionCtor {
  new (host: string, port: number, password: string, onReady: () => void): EslConnection;
}

/** The SIP dialog between drachtio and FreeSWITCH behind an endpoint (drachtio-srf Dialog). */
export interface FsDialog {
  readonly connected: boolean;
  destroy(): Promise<unknown>;
}

export interface FsPlayResult {
  playbackSeconds?: string;
  playbackMilliseconds?: string;
}

/** fsmrf `Endpoint`: one FreeSWITCH channel, controlled over its own outbound ESL connection. */
export interface FsEndpoint {
  readonly uuid: string;
  readonly local: { sdp?: string };
  readonly connected: boolean;
  readonly dialog: FsDialog | null;
  modify(sdp: string): Promise<unknown>;
  play(files: string | string[]): Promise<FsPlayResult>;
  speak(opts: { ttsEngine: string; voice: string; text: string }): Promise<void>;
  api(command: string, args: string): Promise<EslEvent>;
  execute(app: string, arg?: string): Promise<EslEvent>;
  destroy(): Promise<void>;
  on(event: 'destroy', fn: (info?: { reason?: string }) => void): unknown;
  removeListener(event: 'destroy', fn: (info?: { reason?: string }) => void): unknown;
}

/** fsmrf `MediaServer`: the inbound ESL connection plus the listener for FreeSWITCH's outbound connections. */
export interface FsMediaServer {
  readonly address: string;
  /** From FreeSWITCH's HEARTBEAT event (every 20 s by default); 0 until the first one. */
  readonly maxSessions: number;
  readonly currentSessions: number;
  readonly listenPort: number;
  readonly conn: EslConnection;
  connected(): boolean;
  createEndpoint(opts?: { headers?: Record<string, string> }): Promise<FsEndpoint>;
  disconnect(): void;
  on(event: 'end', fn: () => void): unknown;
  on(event: 'error', fn: (err: Error) => void): unknown;
  once(event: 'ready', fn: () => void): unknown;
  once(event: 'error', fn: (err: Error) => void): unknown;
  removeAllListeners(event?: string): unknown;
}

interface MrfInstance {
  readonly srf: FsmrfSrf;
}

interface FsmrfModules {
  Mrf: new (srf: FsmrfSrf) => MrfInstance;
  MediaServer: new (
    conn: EslConnection,
    mrf: MrfInstance,
    listenAddress: string,
    listenPort: number,
    advertisedAddress: string | undefined,
    advertisedPort: number | undefined,
    profile: string,
  ) => FsMediaServer;
  Connection: EslConnectionCtor;
}

let modules: FsmrfModules | undefined;

/** Loads fsmrf, its MediaServer class and the modesl copy fsmrf itself resolves (CommonJS). */
function fsmrf(): FsmrfModules {
  if (modules) return modules;
  const require = createRequire(import.meta.url);
  const main = require.resolve('drachtio-fsmrf');
  const fromFsmrf = createRequire(main);
  modules = {
    Mrf: require('drachtio-fsmrf') as FsmrfModules['Mrf'],
    MediaServer: require(join(dirname(main), 'mediaserver.js')) as FsmrfModules['MediaServer'],
    Connection: (fromFsmrf('drachtio-modesl') as { Connection: EslConnectionCtor }).Connection,
  };
  return modules;
}

/**
 * fsmrf's Mrf over whichever Srf `current()` returns at the time of each
 * INVITE: MediaServer copies `mrf.srf` once, and a drachtio backend that
 * replaces its Srf on reconnect would otherwise leave it a dead one.
 */
export function createMrf(current: () => FsmrfSrf | undefined): MrfInstance {
  const forwarding: FsmrfSrf = {
    createUAC(uri, opts) {
      const srf = current();
      if (!srf) return Promise.reject(new MediaError('drachtio-server not connected: cannot reach FreeSWITCH'));
      return srf.createUAC(uri, opts);
    },
  };
  return new (fsmrf().Mrf)(forwarding);
}

export interface ConnectMediaServerOptions {
  address: string;
  port: number;
  secret: string;
  /** Where we listen for FreeSWITCH's outbound ESL connections (one per endpoint). */
  listenAddress: string;
  listenPort: number;
  /** The sofia profile drachtio INVITEs (fsmrf's default: drachtio_mrf). */
  profile: string;
  timeoutMs: number;
}

/** Connects to one FreeSWITCH's event socket and resolves once fsmrf's MediaServer is ready. */
export function connectMediaServer(mrf: MrfInstance, o: ConnectMediaServerOptions): Promise<FsMediaServer> {
  const { Connection, MediaServer } = fsmrf();
  return new Promise<FsMediaServer>((resolve, reject) => {
    let settled = false;
    let ms: FsMediaServer | undefined;
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (ms) {
        ms.removeAllListeners();
        ms.disconnect();
      } else {
        conn.removeAllListeners();
        conn.disconnect();
      }
      reject(err instanceof MediaError ? err : new MediaError(`FreeSWITCH ${o.address}:${o.port}: ${err.message}`));
    };
    const timer = setTimeout(() => fail(new Error(`no ready event socket within ${o.timeoutMs} ms`)), o.timeoutMs);
    const conn = new Connection(o.address, o.port, o.secret, () => {
      // Authenticated. fsmrf would throw (uncaught) on a missing profile: check it first.
      conn.api('sofia status', (res) => {
        if (settled) return;
        const profileLine = new RegExp(`^\\s*${o.profile}\\s.*sip:mod_sofia@`, 'm');
        if (!profileLine.test(res.getBody())) return fail(new Error(`no "${o.profile}" sofia profile (see docker/freeswitch)`));
        // fsmrf's MediaServer listens for FreeSWITCH's outbound connections with no 'error' listener: a port in use
        // (or an address not on this host) would be an uncaught exception that ends the process. Tried here first.
        const probe = createServer();
        probe.once('error', (err: NodeJS.ErrnoException) =>
          fail(new MediaError(`cannot listen for FreeSWITCH's outbound connections on ${o.listenAddress}:${o.listenPort} (${err.code ?? err.message}); set media.freeswitch.listenAddress / listenPort`)),
        );
        probe.listen(o.listenPort, o.listenAddress, () => {
          probe.close(() => {
            if (settled) return;
            ms = new MediaServer(conn, mrf, o.listenAddress, o.listenPort, undefined, undefined, o.profile);
            ms.once('ready', () => {
              if (settled) return;
              settled = true;
              clearTimeout(timer);
              resolve(ms!);
            });
            ms.once('error', (err: Error) => fail(err));
          });
        });
      });
    });
    // modesl's own reconnect loop off (see above): attempts start at 1, so maxAttempts 1 stops it at once.
    conn.initializeRetryVars();
    conn.reconnectOpts = { maxAttempts: 1 };
    conn.on('error', (err: Error) => fail(err));
    conn.on('esl::end', () => fail(new Error('connection closed')));
    conn.on('esl::event::auth::fail', () => fail(new Error('authentication failed (wrong secret)')));
    conn.on('esl::event::raw::text/rude-rejection', () => fail(new Error('rejected by the event socket ACL')));
  });
}
