/**
 * UDP transport. One listening socket receives requests and responses; each
 * destination we send to gets its own *connected* socket bound to the same
 * local port (SO_REUSEADDR), so that
 *  - the source port of our requests equals the port in Via/Contact, and
 *  - ICMP port-unreachable for that destination is reported by the kernel as
 *    ECONNREFUSED on the connected socket (unconnected UDP sockets never see it).
 */
import dgram from 'node:dgram';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import { parseMessage } from './parser.js';
import type { Via } from './message.js';
import {
  destinationKey,
  logMalformed,
  transportError,
  type Destination,
  type InboundSource,
  type Transport,
  type TransportEvents,
  type TransportOptions,
} from './transport.js';

/** Destination sockets idle this long are closed by the sweep. */
const IDLE_MS = 120_000;
const SWEEP_MS = 60_000;
/**
 * Receive/send buffer of every SIP socket. The kernel default (~208 KB) holds
 * well under a second of responses at 2,000 calls/s: a worker busy for a few
 * tens of ms (GC, a burst of jobs) then loses 100/180/487s, and calls time out.
 * Linux caps it at net.core.rmem_max / wmem_max (raise those on a busy host).
 */
const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

interface DestinationSocket {
  readonly destination: Destination;
  socket: dgram.Socket | undefined;
  connected: boolean;
  queue: Buffer[];
  lastUsed: number;
  closed: boolean;
}

export class UdpTransport implements Transport {
  readonly protocol = 'udp' as const;
  readonly reliable = false;
  private readonly host: string;
  private readonly requestedPort: number;
  private readonly logger: Logger;
  private readonly events: TransportEvents;
  private readonly family: 'udp4' | 'udp6';
  private listener: dgram.Socket | undefined;
  private port = 0;
  private readonly destinations = new Map<string, DestinationSocket>();
  private sweep: ReturnType<typeof setInterval> | undefined;
  private closing = false;

  constructor(options: TransportOptions) {
    this.host = options.host;
    this.requestedPort = options.port;
    this.logger = options.logger;
    this.events = options.events;
    this.family = isIP(options.host) === 6 ? 'udp6' : 'udp4';
  }

  get localPort(): number {
    return this.port;
  }

  async listen(): Promise<void> {
    // The listener needs SO_REUSEADDR (the destination sockets bind its port too), and with it Linux lets a second
    // process bind the same UDP port without an error, then gives each datagram to only one of them: two workers
    // configured with one port would each lose the other's responses. A socket without it is refused while anyone
    // holds the port, so that is asked first (an ephemeral port, 0, is nobody else's).
    if (this.requestedPort !== 0) await this.assertPortFree();
    const socket = dgram.createSocket({ type: this.family, reuseAddr: true, recvBufferSize: SOCKET_BUFFER_BYTES, sendBufferSize: SOCKET_BUFFER_BYTES });
    socket.on('message', (msg, rinfo) => this.receive(msg, rinfo.address, rinfo.port));
    socket.on('error', (err) => this.logger.warn({ err: err.message }, 'UDP listener error'));
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(this.requestedPort, this.host, () => {
        socket.off('error', reject);
        resolve();
      });
    });
    this.listener = socket;
    this.port = socket.address().port;
    this.sweep = setInterval(() => this.sweepIdle(), SWEEP_MS);
    this.sweep.unref();
  }

  /** Binds the configured port without SO_REUSEADDR and lets it go: EADDRINUSE when another socket holds it. */
  private async assertPortFree(): Promise<void> {
    const probe = dgram.createSocket({ type: this.family, reuseAddr: false });
    try {
      await new Promise<void>((resolve, reject) => {
        probe.once('error', reject);
        probe.bind({ port: this.requestedPort, address: this.host, exclusive: true }, () => resolve());
      });
    } finally {
      await new Promise<void>((resolve) => {
        try {
          probe.close(() => resolve());
        } catch {
          resolve(); // never bound
        }
      });
    }
  }

  send(destination: Destination, data: Buffer): void {
    if (this.closing || this.listener === undefined) {
      this.reportLater(destination, transportError('ENOTCONN', 'UDP transport is not listening'));
      return;
    }
    const key = destinationKey(destination);
    let entry = this.destinations.get(key);
    if (entry === undefined || entry.closed) {
      entry = { destination, socket: undefined, connected: false, queue: [], lastUsed: Date.now(), closed: false };
      this.destinations.set(key, entry);
      void this.openDestination(entry);
    }
    entry.lastUsed = Date.now();
    if (!entry.connected || entry.socket === undefined) {
      entry.queue.push(data);
      return;
    }
    this.sendOn(entry, data);
  }

  async close(): Promise<void> {
    this.closing = true;
    if (this.sweep !== undefined) clearInterval(this.sweep);
    const closes: Promise<void>[] = [];
    for (const entry of this.destinations.values()) closes.push(this.closeDestination(entry));
    this.destinations.clear();
    if (this.listener !== undefined) closes.push(closeSocket(this.listener));
    this.listener = undefined;
    await Promise.all(closes);
  }

  private async openDestination(entry: DestinationSocket): Promise<void> {
    const dest = entry.destination;
    let address = dest.host;
    try {
      if (isIP(address) === 0) address = (await lookup(address)).address;
    } catch (err) {
      this.failDestination(entry, transportError('ENOTFOUND', `cannot resolve ${dest.host}: ${errMessage(err)}`));
      return;
    }
    if (entry.closed) return;
    const family = isIP(address) === 6 ? 'udp6' : 'udp4';
    const socket = dgram.createSocket({ type: family, reuseAddr: true, recvBufferSize: SOCKET_BUFFER_BYTES, sendBufferSize: SOCKET_BUFFER_BYTES });
    entry.socket = socket;
    socket.on('message', (msg, rinfo) => this.receive(msg, rinfo.address, rinfo.port));
    socket.on('error', (err) => {
      // ECONNREFUSED from recvmsg: ICMP port unreachable for this destination.
      this.logger.debug({ err: err.message, destination: destinationKey(dest) }, 'UDP destination error');
      if (!entry.connected) {
        this.failDestination(entry, err);
        return;
      }
      this.events.onDestinationError(dest, err);
    });
    // Same local port as the listener when the address family allows it.
    const bindPort = family === this.family ? this.port : 0;
    const bindHost = family === this.family ? this.host : undefined;
    socket.bind({ port: bindPort, address: bindHost, exclusive: false }, () => {
      if (entry.closed) return;
      // A destination Node refuses to connect to (a bad port from the wire) fails its transactions, never the process.
      const connected = (err?: Error): void => {
        if (entry.closed) return;
        if (err) {
          this.failDestination(entry, err);
          return;
        }
        entry.connected = true;
        const queued = entry.queue;
        entry.queue = [];
        for (const data of queued) this.sendOn(entry, data);
      };
      try {
        socket.connect(dest.port, address, connected);
      } catch (err) {
        connected(err instanceof Error ? err : new Error(String(err)));
      }
    });
  }

  private sendOn(entry: DestinationSocket, data: Buffer): void {
    const socket = entry.socket;
    if (socket === undefined) return;
    try {
      socket.send(data, (err) => {
        if (err) this.events.onDestinationError(entry.destination, err);
      });
    } catch (err) {
      this.reportLater(entry.destination, err instanceof Error ? err : new Error(String(err)));
    }
  }

  /** The destination socket cannot be used: report, drop queued data, forget it. */
  private failDestination(entry: DestinationSocket, err: Error): void {
    entry.queue = [];
    void this.closeDestination(entry);
    const key = destinationKey(entry.destination);
    if (this.destinations.get(key) === entry) this.destinations.delete(key);
    if (!this.closing) this.events.onDestinationError(entry.destination, err);
  }

  private closeDestination(entry: DestinationSocket): Promise<void> {
    entry.closed = true;
    const socket = entry.socket;
    entry.socket = undefined;
    return socket === undefined ? Promise.resolve() : closeSocket(socket);
  }

  private sweepIdle(): void {
    const cutoff = Date.now() - IDLE_MS;
    for (const [key, entry] of this.destinations) {
      if (entry.lastUsed < cutoff) {
        this.destinations.delete(key);
        void this.closeDestination(entry);
      }
    }
  }

  private reportLater(destination: Destination, err: Error): void {
    process.nextTick(() => this.events.onDestinationError(destination, err));
  }

  private receive(msg: Buffer, address: string, port: number): void {
    try {
      const result = parseMessage(msg, { datagram: true });
      if (!result.ok) {
        // A bare CRLF keep-alive is not worth a warning.
        if (result.reason !== 'empty message') logMalformed(this.logger, result.reason, address, port, 'udp');
        return;
      }
      const source: InboundSource = {
        protocol: 'udp',
        remoteAddress: address,
        remotePort: port,
        respond: (data: Buffer, via: Via) => this.respond(data, via, address, port),
      };
      this.events.onMessage(result.message, source);
    } catch (err) {
      this.logger.error({ err: errMessage(err) }, 'error handling UDP message');
    }
  }

  /** RFC 3261 18.2.2 + RFC 3581: to the source address; source port if rport was requested, else the Via port. */
  private respond(data: Buffer, via: Via, address: string, port: number): void {
    const listener = this.listener;
    if (listener === undefined) return;
    const targetPort = 'rport' in via.params ? port : (via.port ?? 5060);
    try {
      listener.send(data, targetPort, address, (err) => {
        if (err) this.logger.debug({ err: err.message }, 'UDP response send failed');
      });
    } catch (err) {
      this.logger.debug({ err: errMessage(err) }, 'UDP response send failed');
    }
  }
}

function closeSocket(socket: dgram.Socket): Promise<void> {
  return new Promise((resolve) => {
    try {
      socket.close(() => resolve());
    } catch {
      resolve();
    }
  });
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
