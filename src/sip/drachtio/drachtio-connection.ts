/**
 * One application connection to drachtio-server (inbound mode: we dial its
 * admin port), as both the drachtio CallOriginator and the FreeSWITCH media
 * backend need it:
 *
 *   const conn = new DrachtioConnection({ host, port, secret, enablePing: true, pingIntervalMs: 10_000,
 *     reconnectMinMs: 1000, reconnectMaxMs: 30_000, logger }, { onDown: (reason, wasUp) => ... });
 *   await conn.start();   // resolves once connected or after the first failed attempt; rejects on a wrong secret
 *   conn.srf;             // the connected Srf, or undefined while disconnected
 *   conn.stop();
 *
 * What drachtio-srf does not do, and this class does:
 *  - reconnect with a bounded, jittered back-off: drachtio-srf's own retry
 *    (lib/wire-protocol.js) grows 150 ms x 1.7^n and re-dials with a fresh
 *    socket but the same agent; it is switched off (`reconnect.maxAttempts: 1`)
 *    and a fresh Srf is made per attempt;
 *  - detect a dead peer: drachtio-srf's `enablePing` sends `ping` frames and
 *    ignores whether the `OK|pong` reply ever comes (drachtio-agent.js keeps
 *    pendingPingRequests but never fills or checks it), so a half-open TCP
 *    connection (peer host gone, no RST) is never noticed. Here the `ping`
 *    frames are ours (same frame, same socket): a ping unanswered after
 *    `pingTimeoutMs` destroys the socket, and 'close' runs the reconnect.
 */
import type { Logger } from 'pino';
import { AppError } from '../../errors/app-error.js';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import { errorMessage } from '../util.js';
import { createSrf, srfWire, type SrfClient, type SrfWire } from './srf-types.js';

export interface DrachtioConnectionOptions {
  host: string;
  port: number;
  secret: string;
  /** Send `ping` frames and drop a connection whose pong does not come back. */
  enablePing: boolean;
  pingIntervalMs: number;
  /** Deadline for each pong; default pingIntervalMs (a pong must come before the next ping is due). */
  pingTimeoutMs?: number;
  reconnectMinMs: number;
  reconnectMaxMs: number;
  /**
   * An attempt not authenticated within this (a server that takes the TCP connection and never answers
   * `authenticate`, a wedged one) is dropped and retried with the back-off; start() settles then. Default 10 s.
   */
  connectTimeoutMs?: number;
  logger: Logger;
  clock?: Clock;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

export interface DrachtioConnectionEvents {
  /** Authenticated to drachtio-server. */
  onUp?(srf: SrfClient): void;
  /** The connection closed (wasUp: it had been authenticated); a reconnect is scheduled unless stopped. */
  onDown?(wasUp: boolean): void;
}

/** Reconnect delay for attempt n (0-based): min x 2^n capped at max, ±20 % jitter, never outside [min, max]. */
export function reconnectDelay(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const base = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  const jittered = base * (0.8 + 0.4 * random());
  return Math.round(Math.max(minMs, Math.min(maxMs, jittered)));
}

/** The message id a `<uuid>|response|<msg id>|...` frame answers (drachtio-server client.cpp createResponseMsg), if it is one. */
export function responseTo(payload: string): string | undefined {
  const leader = payload.slice(0, Math.min(payload.length, 120)).split('|');
  return leader[1] === 'response' ? leader[2] : undefined;
}

export class DrachtioConnection {
  private readonly options: DrachtioConnectionOptions;
  private readonly events: DrachtioConnectionEvents;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private current: SrfClient | undefined;
  private up = false;
  private running = false;
  private attempt = 0;
  private reconnectTimer: TimerHandle | undefined;
  private connectTimer: TimerHandle | undefined;
  private keepalive: Keepalive | undefined;
  /** Settles start(): the first attempt succeeded, failed, or was refused authentication. */
  private firstAttempt: { resolve: () => void; reject: (err: Error) => void } | undefined;

  constructor(options: DrachtioConnectionOptions, events: DrachtioConnectionEvents = {}) {
    this.options = options;
    this.events = events;
    this.logger = options.logger;
    this.clock = options.clock ?? systemClock;
  }

  /** Authenticated to drachtio-server right now (readiness). */
  get connected(): boolean {
    return this.up;
  }

  /** The Srf while connected. */
  get srf(): SrfClient | undefined {
    return this.up ? this.current : undefined;
  }

  /**
   * Connect. Resolves once authenticated, or after the first attempt failed
   * (drachtio-server down: reconnecting goes on in the background); rejects
   * with `drachtio_auth_failed` when drachtio-server refuses the secret.
   */
  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.attempt = 0;
    await new Promise<void>((resolve, reject) => {
      this.firstAttempt = { resolve, reject };
      this.connect();
    });
  }

  /** Disconnect for good; onDown is not called. */
  stop(): void {
    if (!this.running) return;
    this.running = false;
    if (this.reconnectTimer !== undefined) this.clock.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.clearConnectTimer();
    this.keepalive?.stop();
    this.keepalive = undefined;
    const srf = this.current;
    this.current = undefined;
    const wasUp = this.up;
    this.up = false;
    // Still connecting: the listeners stay, and the 'connect' handler closes the late connection.
    if (srf !== undefined && wasUp) {
      srf.removeAllListeners();
      srf.on('error', () => undefined);
      safeDisconnect(srf, this.logger);
    }
    this.settleFirstAttempt();
  }

  private connect(): void {
    const { host, port, secret } = this.options;
    const srf = createSrf();
    this.current = srf;
    srf.on('connect', (err, hostport, serverVersion) => {
      if (srf !== this.current || !this.running) {
        // An attempt that outlived stop() or a newer attempt: close it.
        if (!err) safeDisconnect(srf, this.logger);
        return;
      }
      if (err) {
        this.logger.error({ err: err.message, host, port }, 'drachtio-server refused the connection (check sip.drachtio.secret)');
        const first = this.firstAttempt;
        this.firstAttempt = undefined;
        first?.reject(new AppError('drachtio_auth_failed', `drachtio-server ${host}:${port}: ${err.message}`));
        return; // the server closes the socket: 'close' schedules a retry
      }
      this.clearConnectTimer();
      this.up = true;
      this.attempt = 0;
      this.logger.info({ host, port, hostport, server_version: serverVersion }, 'connected to drachtio-server');
      this.startKeepalive(srf);
      this.events.onUp?.(srf);
      this.settleFirstAttempt();
    });
    srf.on('error', (err) => {
      // drachtio-srf re-emits socket errors; without a listener they would throw. 'close' follows.
      this.logger.debug({ err: err.message, host, port }, 'drachtio socket error');
    });
    srf.on('close', () => this.onClose(srf));
    // Without an answer to `authenticate` neither 'connect' nor 'close' would ever come: start() would wait for ever,
    // and a reconnect that met a wedged server would stay stuck on it.
    const timeoutMs = this.options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.connectTimer = this.clock.setTimeout(() => {
      this.connectTimer = undefined;
      if (srf !== this.current || this.up) return;
      this.logger.error({ host, port, timeout_ms: timeoutMs }, 'drachtio-server did not authenticate the connection in time; dropping it');
      srfWire(srf)?.destroy();
      safeDisconnect(srf, this.logger);
      // 'close' may not follow a socket that never opened: the retry is scheduled here, once (onClose checks current).
      this.onClose(srf);
    }, timeoutMs);
    srf.connect({
      host,
      port,
      secret,
      // Pings are ours (Keepalive below): drachtio-srf's never notice a missing pong.
      enablePing: false,
      // Reconnects are ours (bounded back-off, a fresh Srf each time): 1 attempt = no retry in drachtio-srf.
      reconnect: { maxAttempts: 1 },
    });
  }

  private startKeepalive(srf: SrfClient): void {
    this.keepalive?.stop();
    this.keepalive = undefined;
    if (!this.options.enablePing) return;
    const wire = srfWire(srf);
    if (wire === undefined) {
      this.logger.warn('drachtio-srf internals not found: keepalive disabled');
      return;
    }
    const intervalMs = this.options.pingIntervalMs;
    const timeoutMs = this.options.pingTimeoutMs ?? intervalMs;
    this.keepalive = new Keepalive(wire, this.clock, intervalMs, timeoutMs, () => {
      if (srf !== this.current) return;
      this.logger.error(
        { host: this.options.host, port: this.options.port, timeout_ms: timeoutMs },
        'drachtio-server did not answer a ping in time; dropping the connection',
      );
      wire.destroy();
    });
  }

  private clearConnectTimer(): void {
    if (this.connectTimer !== undefined) this.clock.clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
  }

  private onClose(srf: SrfClient): void {
    if (srf !== this.current) return;
    this.clearConnectTimer();
    const wasUp = this.up;
    this.up = false;
    this.keepalive?.stop();
    this.keepalive = undefined;
    srf.removeAllListeners();
    // Keep an 'error' listener: a late socket error must not become an uncaught exception.
    srf.on('error', () => undefined);
    this.current = undefined;
    this.events.onDown?.(wasUp);
    this.settleFirstAttempt();
    if (!this.running) return;
    const delay = reconnectDelay(this.attempt++, this.options.reconnectMinMs, this.options.reconnectMaxMs);
    this.logger.warn({ host: this.options.host, port: this.options.port, delay_ms: delay, attempt: this.attempt }, 'drachtio-server not connected; retrying');
    this.reconnectTimer = this.clock.setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this.running) this.connect();
    }, delay);
  }

  private settleFirstAttempt(): void {
    const first = this.firstAttempt;
    this.firstAttempt = undefined;
    first?.resolve();
  }
}

/** `ping` every intervalMs; the `OK|pong` (client.cpp: createResponseMsg(.., true, "pong")) must answer within timeoutMs. */
class Keepalive {
  private tick: TimerHandle | undefined;
  private deadline: TimerHandle | undefined;
  private outstanding: string | undefined;
  private readonly unsubscribe: () => void;
  private stopped = false;

  constructor(
    private readonly wire: SrfWire,
    private readonly clock: Clock,
    private readonly intervalMs: number,
    private readonly timeoutMs: number,
    private readonly onDead: () => void,
  ) {
    this.unsubscribe = wire.onFrame((payload) => {
      if (this.outstanding !== undefined && responseTo(payload) === this.outstanding) this.pong();
    });
    this.schedule();
  }

  private schedule(): void {
    this.tick = this.clock.setTimeout(() => {
      this.tick = undefined;
      this.ping();
    }, this.intervalMs);
  }

  private ping(): void {
    if (this.stopped) return;
    if (this.outstanding === undefined) {
      this.outstanding = this.wire.send('ping');
      if (this.outstanding !== undefined) {
        this.deadline = this.clock.setTimeout(() => {
          this.deadline = undefined;
          if (this.stopped) return;
          this.stop();
          this.onDead();
        }, this.timeoutMs);
      }
    }
    this.schedule();
  }

  private pong(): void {
    this.outstanding = undefined;
    if (this.deadline !== undefined) this.clock.clearTimeout(this.deadline);
    this.deadline = undefined;
  }

  stop(): void {
    this.stopped = true;
    if (this.tick !== undefined) this.clock.clearTimeout(this.tick);
    if (this.deadline !== undefined) this.clock.clearTimeout(this.deadline);
    this.tick = this.deadline = undefined;
    this.unsubscribe();
  }
}

function safeDisconnect(srf: SrfClient, logger: Logger): void {
  try {
    srf.disconnect();
  } catch (err) {
    logger.debug({ err: errorMessage(err) }, 'drachtio disconnect failed (no socket)');
  }
}
