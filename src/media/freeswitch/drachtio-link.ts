import type { Logger } from 'pino';
import { DrachtioConnection, type DrachtioConnectionOptions } from '../../sip/drachtio/drachtio-connection.js';
import type { FsmrfSrf } from './fsmrf-types.js';

/**
 * The media backend's own connection to drachtio-server, over which fsmrf
 * INVITEs FreeSWITCH (and FreeSWITCH's BYEs come back: drachtio-server
 * routes in-dialog requests to the connection that created the dialog).
 * Same connection handling as the drachtio CallOriginator
 * (DrachtioConnection: bounded reconnect, ping keepalive that drops a
 * silent peer); a second application connection to drachtio-server costs
 * nothing.
 */

/** host, port, secret, keepalive (sip.drachtio.enablePing / pingIntervalMs), reconnect back-off, logger. */
export type DrachtioLinkOptions = Omit<DrachtioConnectionOptions, 'clock'>;

export class DrachtioLink {
  private readonly connection: DrachtioConnection;
  private readonly adapter: FsmrfSrf;

  constructor(private readonly opts: DrachtioLinkOptions) {
    const { logger, ...connection } = opts;
    this.connection = new DrachtioConnection(
      { ...connection, logger: logger.child({ component: 'drachtio-media' }) },
      {
        onDown: (wasUp) => {
          if (wasUp) logger.warn('media: drachtio-server connection lost; reconnecting');
        },
      },
    );
    // fsmrf's INVITE to FreeSWITCH: no SDP (3pcc), FreeSWITCH's offer in the 200.
    this.adapter = {
      createUAC: (uri, o) => {
        const srf = this.connection.srf;
        if (srf === undefined) return Promise.reject(new Error('drachtio-server not connected'));
        return srf.createUAC(uri, o, {});
      },
    };
  }

  /** Connects; resolves on the first success or failure (reconnecting goes on). A refused secret is logged, not thrown. */
  async start(): Promise<void> {
    await this.connection.start().catch((err: Error) => {
      this.opts.logger.error({ err: err.message }, 'media: drachtio-server refused the connection');
    });
  }

  /** The Srf for fsmrf while connected. */
  current(): FsmrfSrf | undefined {
    return this.connection.connected ? this.adapter : undefined;
  }

  get connected(): boolean {
    return this.connection.connected;
  }

  stop(): void {
    this.connection.stop();
  }
}
