/**
 * Transport layer (RFC 3261 18): a small interface with a UDP and a TCP
 * implementation. Transports parse what they receive; malformed input is
 * logged and dropped and never throws out of a socket handler.
 */
import type { Logger } from 'pino';
import type { ParsedMessage, Via } from './message.js';

/** `tls`: TLS over TCP (RFC 3261 26.2, Via transport `TLS`). */
export type TransportProtocol = 'udp' | 'tcp' | 'tls';

/** Where a request goes: from a SIP URI, or its SRV target (sip-locator.ts); a host name is looked up by the transport. */
export interface Destination {
  readonly protocol: TransportProtocol;
  /** IP address or host name; IPv6 without brackets. */
  readonly host: string;
  readonly port: number;
  /** Set when DNS SRV chose `host`: the trunk's own host name, which TLS verifies and sends as SNI (RFC 5922 4.1). */
  readonly serverName?: string | undefined;
  /** TLS only: the trunk's own settings (`sip.trunks[].tls`), over the stack's; undefined: the stack's. */
  readonly tls?: TlsOverrides | undefined;
}

/** A trunk's own TLS settings; each one given replaces the stack's (`sip.tls`) for connections made for that trunk. */
export interface TlsOverrides {
  readonly caFile?: string | undefined;
  /** True: Node's trust store (the public roots) instead of the stack's `caFile`; never given with `caFile` (config). */
  readonly systemCa?: boolean | undefined;
  readonly certFile?: string | undefined;
  readonly keyFile?: string | undefined;
  readonly insecureSkipVerify?: boolean | undefined;
  /** The name sent as SNI and checked against the certificate, instead of the trunk's host. */
  readonly serverName?: string | undefined;
  readonly handshakeTimeoutMs?: number | undefined;
  readonly idleTimeoutMs?: number | undefined;
}

/**
 * Identifies a destination in connection pools and transaction tables. Destinations with different TLS settings get
 * different keys, so a connection verified (or authenticated) for one trunk's settings is never used for another's;
 * nor one made with other timeouts: the handshake timer is the dialling trunk's, and would fail another trunk's call
 * waiting on the connection at the wrong time, and one idle timer closes it.
 */
export function destinationKey(d: Destination): string {
  const key = d.protocol + ':' + d.host + ':' + d.port;
  return d.tls === undefined ? key : key + '#' + tlsSettingsId(d.tls);
}

/** Short ids of the distinct TLS settings seen (`#1`, `#2` in destination keys), by their values, then by object. */
const settingsIds = new Map<string, number>();
const idOf = new WeakMap<TlsOverrides, number>();

function tlsSettingsId(tls: TlsOverrides): number {
  let id = idOf.get(tls);
  if (id === undefined) {
    // Every setting given, in one order: a field added to TlsOverrides is never left out.
    const values = JSON.stringify(Object.entries(tls).filter(([, v]) => v !== undefined).sort(([a], [b]) => (a < b ? -1 : 1)));
    id = settingsIds.get(values) ?? settingsIds.size + 1;
    settingsIds.set(values, id);
    idOf.set(tls, id);
  }
  return id;
}

/** Where an inbound message came from, and how to answer it (RFC 3261 18.2.2). */
export interface InboundSource {
  readonly protocol: TransportProtocol;
  readonly remoteAddress: string;
  readonly remotePort: number;
  /** Send a response to a request received from this source. */
  respond(data: Buffer, via: Via): void;
}

export interface TransportEvents {
  /** A well-formed message arrived. */
  onMessage(message: ParsedMessage, source: InboundSource): void;
  /**
   * Something sent to `destination` failed: ICMP port unreachable on UDP
   * (ECONNREFUSED), TCP connection refused / reset / closed, DNS failure.
   */
  onDestinationError(destination: Destination, error: Error): void;
  /** Does a call or transaction still need the connection to `destination`? (Asked before an idle one is closed.) */
  destinationInUse?(destination: Destination): boolean;
  /** The trunk whose requests go to `destination`, for log lines. */
  trunkOf?(destination: Destination): string | undefined;
}

export interface Transport {
  readonly protocol: TransportProtocol;
  /** Reliable transports get no retransmissions and zero Timers D and K. */
  readonly reliable: boolean;
  /** The bound port (after listen()). */
  readonly localPort: number;
  listen(): Promise<void>;
  /** Queue bytes for `destination`. Never throws; errors go to TransportEvents.onDestinationError. */
  send(destination: Destination, data: Buffer): void;
  close(): Promise<void>;
}

export interface TransportOptions {
  host: string;
  /** 0 for an ephemeral port. */
  port: number;
  logger: Logger;
  events: TransportEvents;
  /**
   * TCP: a connection of ours not established within this (ms) fails its destination (ETIMEDOUT), as a refused one
   * does, rather than leave its requests to their transaction timers (a firewall that drops the SYN). 0: no limit.
   */
  connectTimeoutMs?: number;
}

/**
 * The code of the error a stream connection (TCP, TLS) reports when the far end sent bytes that cannot be framed as
 * SIP (no usable Content-Length, a head over the limit) and the connection was closed for it: unlike a refused or reset
 * connection, what was written on it reached the far end, which is answering it.
 */
export const UNREADABLE_STREAM = 'ESIPFRAMING';

/** True for the error of a connection closed because what came on it could not be framed (UNREADABLE_STREAM). */
export function isUnreadableStream(err: Error): boolean {
  return (err as Error & { code?: string }).code === UNREADABLE_STREAM;
}

/** Error carrying a Node errno-like code. */
export function transportError(code: string, message: string): Error {
  const err = new Error(message) as Error & { code: string };
  err.code = code;
  return err;
}

export function logMalformed(logger: Logger, reason: string, remoteAddress: string, remotePort: number, protocol: string): void {
  logger.warn({ reason, remote: `${remoteAddress}:${remotePort}`, protocol }, 'dropped malformed SIP message');
}
