/**
 * TCP transport. Outgoing: one connection per destination, opened on first
 * use and reused. Incoming: a server on the listen port accepts connections
 * the far end opens (e.g. in-dialog BYE to our Contact). Every connection is
 * framed by Content-Length; a bad frame closes that connection (reported to the
 * transactions on it as UNREADABLE_STREAM: the far end has their requests).
 * TlsTransport (tls-transport.ts) is this with TLS sockets and no server.
 */
import net from 'node:net';
import type { Logger } from 'pino';
import { StreamFramer } from './parser.js';
import type { Via } from './message.js';
import {
  destinationKey,
  logMalformed,
  transportError,
  UNREADABLE_STREAM,
  type Destination,
  type InboundSource,
  type Transport,
  type TransportEvents,
  type TransportOptions,
} from './transport.js';

export interface Connection {
  readonly socket: net.Socket;
  readonly framer: StreamFramer;
  /** Set for connections we opened. */
  readonly destination: Destination | undefined;
  errored: boolean;
}

export class TcpTransport implements Transport {
  readonly protocol: 'tcp' | 'tls' = 'tcp';
  readonly reliable = true;
  protected readonly host: string;
  private requestedPort: number;
  protected readonly logger: Logger;
  protected readonly events: TransportEvents;
  private server: net.Server | undefined;
  private port = 0;
  private readonly outgoing = new Map<string, Connection>();
  private readonly all = new Set<Connection>();
  private closing = false;
  private readonly connectTimeoutMs: number;

  constructor(options: TransportOptions) {
    this.host = options.host;
    this.requestedPort = options.port;
    this.logger = options.logger;
    this.events = options.events;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 0;
  }

  get localPort(): number {
    return this.port;
  }

  /** Used by the stack to put TCP on the port UDP got when port 0 was requested. */
  setPort(port: number): void {
    this.requestedPort = port;
  }

  async listen(): Promise<void> {
    const server = net.createServer((socket) => this.adopt(socket, undefined));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port: this.requestedPort, host: this.host, exclusive: true }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    // Once listening: a failed listen is the caller's to report (with port 0, the stack tries another port), not a warning.
    server.on('error', (err) => this.logger.warn({ err: err.message }, 'TCP server error'));
    this.server = server;
    const addr = server.address();
    this.port = typeof addr === 'object' && addr !== null ? addr.port : this.requestedPort;
  }

  send(destination: Destination, data: Buffer): void {
    if (this.closing) {
      process.nextTick(() => this.events.onDestinationError(destination, transportError('ENOTCONN', 'TCP transport closed')));
      return;
    }
    const key = destinationKey(destination);
    let conn = this.outgoing.get(key);
    if (conn === undefined || conn.socket.destroyed) {
      const socket = this.dial(destination);
      socket.setNoDelay(true);
      conn = this.adopt(socket, destination);
      this.outgoing.set(key, conn);
      this.opened(conn, destination);
      // TLS bounds its connect and handshake together (tls-transport.ts).
      if (this.protocol === 'tcp' && this.connectTimeoutMs > 0) this.boundConnect(socket, destination);
    }
    conn.socket.write(data);
  }

  async close(): Promise<void> {
    this.closing = true;
    for (const conn of this.all) conn.socket.destroy();
    this.all.clear();
    this.outgoing.clear();
    const server = this.server;
    this.server = undefined;
    if (server !== undefined) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** A connection not established within connectTimeoutMs fails its destination, as a refused one does. */
  private boundConnect(socket: net.Socket, destination: Destination): void {
    const ms = this.connectTimeoutMs;
    const timer = setTimeout(() => {
      if (socket.connecting) socket.destroy(transportError('ETIMEDOUT', `TCP connect to ${destination.host}:${destination.port} not established within ${ms} ms`));
    }, ms);
    timer.unref();
    const clear = (): void => clearTimeout(timer);
    socket.once('connect', clear);
    socket.once('close', clear);
  }

  /** Open a connection to `destination` (TLS: tls-transport.ts). */
  protected dial(destination: Destination): net.Socket {
    return net.connect({ host: destination.host, port: destination.port });
  }

  /** A connection of ours was just opened (TLS arms its handshake and idle timers). */
  protected opened(_conn: Connection, _destination: Destination): void {}

  /** Close a connection of ours that nothing needs, without reporting it as a transport error. */
  protected retire(conn: Connection): void {
    conn.errored = true;
    if (conn.destination !== undefined) {
      const key = destinationKey(conn.destination);
      if (this.outgoing.get(key) === conn) this.outgoing.delete(key);
    }
    conn.socket.end();
    conn.socket.destroySoon();
  }

  /** A connection of ours failed or was reset; TLS logs its handshake failures louder. */
  protected connectionError(conn: Connection, err: Error): void {
    this.logger.debug({ err: err.message, remote: remoteOf(conn) }, `${this.protocol.toUpperCase()} connection error`);
  }

  private adopt(socket: net.Socket, destination: Destination | undefined): Connection {
    const conn: Connection = { socket, framer: new StreamFramer(), destination, errored: false };
    this.all.add(conn);
    socket.on('data', (chunk: Buffer) => this.receive(conn, chunk));
    socket.on('error', (err) => {
      this.connectionError(conn, err);
      this.lost(conn, err);
    });
    socket.on('close', () => {
      this.lost(conn, transportError('ECONNRESET', `${this.protocol.toUpperCase()} connection closed`));
      this.all.delete(conn);
      if (destination !== undefined) {
        const key = destinationKey(destination);
        if (this.outgoing.get(key) === conn) this.outgoing.delete(key);
      }
    });
    return conn;
  }

  /** Report a dead outgoing connection once, so transactions waiting on it fail fast. */
  protected lost(conn: Connection, err: Error): void {
    if (conn.errored) return;
    conn.errored = true;
    if (conn.destination !== undefined) {
      const key = destinationKey(conn.destination);
      if (this.outgoing.get(key) === conn) this.outgoing.delete(key);
      if (!this.closing) this.events.onDestinationError(conn.destination, err);
    }
  }

  private receive(conn: Connection, chunk: Buffer): void {
    try {
      const { messages, dropped, error } = conn.framer.push(chunk);
      const remoteAddress = conn.socket.remoteAddress ?? '';
      const remotePort = conn.socket.remotePort ?? 0;
      // A message that framed but did not parse is dropped alone, as over UDP: the connection carries other calls.
      for (const reason of dropped ?? []) logMalformed(this.logger, reason, remoteAddress, remotePort, this.protocol);
      for (const message of messages) {
        const source: InboundSource = {
          protocol: this.protocol,
          remoteAddress,
          remotePort,
          respond: (data: Buffer, _via: Via) => {
            if (!conn.socket.destroyed) conn.socket.write(data);
          },
        };
        this.events.onMessage(message, source);
      }
      if (error !== undefined) {
        logMalformed(this.logger, error, remoteAddress, remotePort, this.protocol);
        // Reported before the close does: the requests written on it reached the far end (UNREADABLE_STREAM).
        this.lost(conn, transportError(UNREADABLE_STREAM, `unreadable SIP on the ${this.protocol.toUpperCase()} connection (${error}); connection closed`));
        conn.socket.destroy();
      }
    } catch (err) {
      this.logger.error({ err: err instanceof Error ? err.message : String(err) }, `error handling ${this.protocol.toUpperCase()} data`);
    }
  }
}

export function remoteOf(conn: Connection): string {
  return `${conn.socket.remoteAddress ?? '?'}:${conn.socket.remotePort ?? '?'}`;
}
