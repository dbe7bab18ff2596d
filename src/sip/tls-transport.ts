/**
 * SIP over TLS, client side (RFC 3261 26.2, 18): the TCP transport's framing, one connection per destination reused
 * by every call to it, with TLS sockets. The server certificate is verified against the CA bundle (`caFile`, else
 * Node's trust store) and the trunk's host name, sent as SNI when it is a name (RFC 6066 3: never an IP address);
 * a client certificate is presented when configured (mutual TLS). No TLS server: the stack only originates, and the
 * trunk's responses and in-dialog requests come back on the connection we opened (RFC 3261 18.2.2, RFC 5923 `alias`
 * in our Via). A connection idle for `idleTimeoutMs` that no call needs any more is closed.
 */
import net from 'node:net';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ConfigError } from '../errors/app-error.js';
import { remoteOf, TcpTransport, type Connection } from './tcp-transport.js';
import { transportError, type Destination, type TransportOptions } from './transport.js';

export interface TlsClientOptions {
  /** PEM CA bundle the trunks' certificates must chain to; none: Node's trust store. */
  caFile?: string | undefined;
  /** PEM client certificate and its key, for trunks that ask for one (mutual TLS). */
  certFile?: string | undefined;
  keyFile?: string | undefined;
  /** Labs only: accept any server certificate. */
  insecureSkipVerify: boolean;
  /** No finished handshake by then: the connection fails (`unreachable`). */
  handshakeTimeoutMs: number;
  /** An unused connection idle this long is closed; 0: never. */
  idleTimeoutMs: number;
}

/** Node's codes for a certificate that did not verify (the TLS handshake reached the certificate and refused it). */
const CERT_ERROR = /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ALTNAME|ISSUER/;

export class TlsTransport extends TcpTransport {
  override readonly protocol = 'tls' as const;
  private readonly options: TlsClientOptions;
  private readonly context: tls.SecureContext;
  /** Destinations whose last connection failed its handshake (certificate, timeout), with the reason: readiness. */
  readonly failing = new Map<string, string>();

  constructor(options: TransportOptions, tlsOptions: TlsClientOptions) {
    super(options);
    this.options = tlsOptions;
    try {
      this.context = tls.createSecureContext({
        ca: tlsOptions.caFile === undefined ? undefined : caBundle(tlsOptions.caFile),
        cert: tlsOptions.certFile === undefined ? undefined : readFileSync(tlsOptions.certFile),
        key: tlsOptions.keyFile === undefined ? undefined : readFileSync(tlsOptions.keyFile),
      });
    } catch (err) {
      throw new ConfigError([`sip.tls: cannot load the CA bundle / client certificate and key: ${err instanceof Error ? err.message : String(err)}`]);
    }
    if (tlsOptions.insecureSkipVerify) {
      this.logger.warn('sip.tls.insecureSkipVerify is true: trunk TLS certificates are NOT verified; anyone on the path can read and change the calls. Labs only');
    }
  }

  /** No listener: see the file comment. */
  override async listen(): Promise<void> {}

  override get localPort(): number {
    return 0;
  }

  protected override dial(destination: Destination): net.Socket {
    return tls.connect({
      host: destination.host,
      port: destination.port,
      // Node checks the certificate against `servername` when set: for an SRV target that is the trunk's domain
      // (RFC 5922 4.1), not the target or its address.
      servername: destination.serverName ?? (net.isIP(destination.host) === 0 ? destination.host : undefined),
      secureContext: this.context,
      rejectUnauthorized: !this.options.insecureSkipVerify,
    });
  }

  protected override opened(conn: Connection, destination: Destination): void {
    const socket = conn.socket as tls.TLSSocket;
    const key = `${destination.host}:${destination.port}`;
    const handshake = setTimeout(() => {
      socket.destroy(transportError('ETLSHANDSHAKETIMEOUT', `TLS handshake with ${key} not finished within ${this.options.handshakeTimeoutMs} ms`));
    }, this.options.handshakeTimeoutMs);
    socket.once('close', () => clearTimeout(handshake));
    socket.once('secureConnect', () => {
      clearTimeout(handshake);
      this.failing.delete(key);
      const cert = socket.getPeerCertificate();
      this.logger.info(
        { remote: key, protocol: socket.getProtocol(), cipher: socket.getCipher().name, subject: cert.subject?.CN, issuer: cert.issuer?.CN, verified: socket.authorized },
        'SIP TLS connection up',
      );
      if (this.options.idleTimeoutMs > 0) socket.setTimeout(this.options.idleTimeoutMs);
    });
    socket.on('timeout', () => {
      if (this.events.destinationInUse?.(destination) === true) {
        socket.setTimeout(this.options.idleTimeoutMs);
        return;
      }
      this.logger.debug({ remote: key }, 'idle SIP TLS connection closed');
      this.retire(conn);
    });
  }

  protected override connectionError(conn: Connection, err: Error): void {
    const code = (err as Error & { code?: string }).code ?? '';
    const remote = conn.destination === undefined ? remoteOf(conn) : `${conn.destination.host}:${conn.destination.port}`;
    // An alert is the trunk refusing us (TLS 1.3 sends "certificate required" after our side saw the handshake end).
    const reason = /ALERT/.test(code)
      ? 'handshake failed'
      : CERT_ERROR.test(code)
        ? 'certificate invalid'
        : code === 'ETLSHANDSHAKETIMEOUT'
          ? 'handshake timeout'
          : /SSL|TLS/.test(code)
            ? 'handshake failed'
            : undefined;
    if (reason === undefined) {
      this.logger.warn({ remote, code, err: err.message }, 'SIP TLS connection error');
      return;
    }
    this.failing.set(remote, `${reason}: ${err.message}`);
    this.logger.warn({ remote, code, reason, err: err.message }, `SIP TLS ${reason}`);
  }
}

/**
 * The certificates of a PEM CA bundle. Node skips what is not a certificate in `ca` without a word, which would leave
 * a trunk with no CA at all (every handshake failing): a file with none, or with one that does not parse, is refused.
 */
function caBundle(file: string): string[] {
  const blocks = readFileSync(file, 'latin1').match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new Error('no PEM certificate (-----BEGIN CERTIFICATE-----) in it');
  for (const block of blocks) {
    try {
      new X509Certificate(block);
    } catch (err) {
      throw new Error(`a certificate in it does not parse (${err instanceof Error ? err.message : String(err)})`);
    }
  }
  return blocks;
}
