import SrfModule from 'drachtio-srf';
import type { Logger } from 'pino';
import type { FsmrfSrf } from './fsmrf-types.js';

/**
 * The media backend's own connection to drachtio-server, over which fsmrf
 * INVITEs FreeSWITCH (and FreeSWITCH's BYEs come back: drachtio-server
 * routes in-dialog requests to the connection that created the dialog).
 * Used until the drachtio CallOriginator exposes its current Srf; a second
 * application connection to drachtio-server costs nothing.
 */

export interface DrachtioLinkOptions {
  host: string;
  port: number;
  secret: string;
  /** Cap of drachtio-srf's reconnect delay (150 ms x 1.7^n otherwise unbounded). */
  reconnectMaxMs: number;
  logger: Logger;
}

/** The part of drachtio-srf used here (its shipped declarations lack `reconnect` and the connect event's arguments). */
interface SrfConnection {
  connect(opts: { host: string; port: number; secret: string; reconnect: { retryMaxDelay: number } }): unknown;
  disconnect(): void;
  createUAC(uri: string, opts: { headers?: Record<string, string>; localSdp?: string }, callbacks: object): Promise<unknown>;
  on(event: 'connect', fn: (err: Error | null | undefined, hostport?: string) => void): unknown;
  on(event: 'close' | 'reconnecting', fn: () => void): unknown;
  on(event: 'error', fn: (err: Error) => void): unknown;
}

export class DrachtioLink {
  private readonly srf: SrfConnection;
  private up = false;
  private readonly adapter: FsmrfSrf;

  constructor(private readonly opts: DrachtioLinkOptions) {
    this.srf = new (SrfModule as unknown as new () => SrfConnection)();
    this.adapter = { createUAC: (uri, o) => this.srf.createUAC(uri, o, {}) };
  }

  /** Connects; resolves on the first success or failure (drachtio-srf keeps retrying). */
  start(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.srf.on('connect', (err, hostport) => {
        this.up = !err;
        if (err) this.opts.logger.warn({ err: err.message }, 'media: drachtio-server connection failed');
        else this.opts.logger.info({ hostport }, 'media: connected to drachtio-server');
        resolve();
      });
      this.srf.on('close', () => {
        if (this.up) this.opts.logger.warn('media: drachtio-server connection lost; reconnecting');
        this.up = false;
        resolve();
      });
      this.srf.on('error', (err) => this.opts.logger.debug({ err: err.message }, 'media: drachtio-srf error'));
      this.srf.connect({
        host: this.opts.host,
        port: this.opts.port,
        secret: this.opts.secret,
        reconnect: { retryMaxDelay: this.opts.reconnectMaxMs },
      });
    });
  }

  /** The Srf for fsmrf while connected. */
  current(): FsmrfSrf | undefined {
    return this.up ? this.adapter : undefined;
  }

  get connected(): boolean {
    return this.up;
  }

  stop(): void {
    this.up = false;
    try {
      this.srf.disconnect();
    } catch {
      // no socket
    }
  }
}
