/**
 * SIP over TLS, client side (RFC 3261 26.2, 18): the TCP transport's framing, one connection per destination reused
 * by every call to it, with TLS sockets. The server certificate is verified against the CA bundle (`caFile`, else
 * Node's trust store) and the trunk's host name, sent as SNI when it is a name (RFC 6066 3: never an IP address);
 * a client certificate is presented when configured (mutual TLS). A trunk may have its own CA bundle (or Node's
 * trust store in place of the stack's bundle: `systemCa`), client certificate, verification switch, server name and
 * handshake and idle timeouts (`sip.trunks[].tls`, carried by its destinations): each given one replaces the stack's
 * for that trunk's connections, which are pooled apart from those made with other settings (destinationKey). No
 * TLS server: the stack only originates, and the trunk's responses and in-dialog requests come back on the connection
 * we opened (RFC 3261 18.2.2, RFC 5923 `alias` in our Via). A connection idle for `idleTimeoutMs` that no call needs
 * any more is closed.
 */
import net from 'node:net';
import tls from 'node:tls';
import { secureContextOf } from '../crypto/tls-context.js';
import { remoteOf, TcpTransport, type Connection } from './tcp-transport.js';
import { destinationKey, transportError, type Destination, type TlsOverrides, type TransportOptions } from './transport.js';

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

/** The settings connections are made with: the stack's, or a trunk's own over them. */
type TlsSettings = TlsClientOptions & { readonly serverName?: string | undefined };

/** Those settings with their files loaded; `caFile` undefined: Node's trust store (for the log lines). */
interface TlsProfile extends Readonly<TlsSettings> {
  readonly context: tls.SecureContext;
}

const INSECURE = 'trunk TLS certificates are NOT verified; anyone on the path can read and change the calls. Labs only';

export class TlsTransport extends TcpTransport {
  override readonly protocol = 'tls' as const;
  private readonly options: TlsClientOptions;
  /** The stack's settings (`sip.tls`), for trunks without their own. */
  private readonly shared: TlsProfile;
  /** Trunks' own settings, loaded once each (a trunk's `tls` object is its config's, frozen). */
  private readonly profiles = new WeakMap<TlsOverrides, TlsProfile>();
  /** Destination keys whose last connection failed its handshake (certificate, timeout), with the reason: readiness. */
  readonly failing = new Map<string, string>();

  constructor(options: TransportOptions, tlsOptions: TlsClientOptions) {
    super(options);
    this.options = tlsOptions;
    this.shared = this.load(tlsOptions, 'sip.tls');
    if (tlsOptions.insecureSkipVerify) this.logger.warn(`sip.tls.insecureSkipVerify is true: ${INSECURE}`);
  }

  /**
   * Loads a trunk's own settings (its CA bundle, client certificate and key read now): a file that is no usable PEM
   * is a ConfigError naming the trunk. Called at start for the configured trunks, and before a trunk's first call.
   */
  prepare(trunkName: string, overrides: TlsOverrides): void {
    if (this.profiles.has(overrides)) return;
    const o = this.options;
    const profile = this.load(
      {
        // systemCa: no CA bundle at all, as when sip.tls.caFile is unset (Node's trust store; a `ca` would replace it).
        caFile: overrides.systemCa === true ? undefined : (overrides.caFile ?? o.caFile),
        // A trunk gives its client certificate and key together or not at all (config check): a pair is never mixed.
        certFile: overrides.certFile ?? o.certFile,
        keyFile: overrides.keyFile ?? o.keyFile,
        insecureSkipVerify: overrides.insecureSkipVerify ?? o.insecureSkipVerify,
        serverName: overrides.serverName,
        handshakeTimeoutMs: overrides.handshakeTimeoutMs ?? o.handshakeTimeoutMs,
        idleTimeoutMs: overrides.idleTimeoutMs ?? o.idleTimeoutMs,
      },
      `trunk "${trunkName}" (sip.trunks[].tls)`,
    );
    this.profiles.set(overrides, profile);
    if (overrides.insecureSkipVerify === true) this.logger.warn({ trunk: trunkName }, `tls.insecureSkipVerify is true for this trunk: ${INSECURE}`);
  }

  /** Reads the files of `settings` into a secure context; a file that is not what it should be is a ConfigError. */
  private load(settings: TlsSettings, what: string): TlsProfile {
    return { ...settings, context: secureContextOf(settings, what) };
  }

  private profileOf(destination: Destination): TlsProfile {
    if (destination.tls === undefined) return this.shared;
    const profile = this.profiles.get(destination.tls);
    // The stack prepares every trunk's settings before its first request; never fall back to the stack's here.
    if (profile === undefined) throw new Error(`TLS settings for ${destinationKey(destination)} not loaded`);
    return profile;
  }

  /** No listener: see the file comment. */
  override async listen(): Promise<void> {}

  override get localPort(): number {
    return 0;
  }

  protected override dial(destination: Destination): net.Socket {
    const profile = this.profileOf(destination);
    return tls.connect({
      host: destination.host,
      port: destination.port,
      // Node checks the certificate against `servername` when set: the trunk's `serverName` when it has one; for an
      // SRV target the trunk's domain (RFC 5922 4.1), not the target or its address.
      servername: profile.serverName ?? destination.serverName ?? (net.isIP(destination.host) === 0 ? destination.host : undefined),
      secureContext: profile.context,
      rejectUnauthorized: !profile.insecureSkipVerify,
    });
  }

  protected override opened(conn: Connection, destination: Destination): void {
    const socket = conn.socket as tls.TLSSocket;
    const remote = `${destination.host}:${destination.port}`;
    // The trunk's own timeouts: the connection is its alone (destinationKey).
    const { handshakeTimeoutMs, idleTimeoutMs } = this.profileOf(destination);
    const handshake = setTimeout(() => {
      socket.destroy(transportError('ETLSHANDSHAKETIMEOUT', `TLS handshake with ${remote} not finished within ${handshakeTimeoutMs} ms`));
    }, handshakeTimeoutMs);
    socket.once('close', () => clearTimeout(handshake));
    socket.once('secureConnect', () => {
      clearTimeout(handshake);
      this.failing.delete(destinationKey(destination));
      const cert = socket.getPeerCertificate();
      this.logger.info(
        {
          remote,
          trunk: this.events.trunkOf?.(destination),
          protocol: socket.getProtocol(),
          cipher: socket.getCipher().name,
          subject: cert.subject?.CN,
          issuer: cert.issuer?.CN,
          verified: socket.authorized,
        },
        'SIP TLS connection up',
      );
      if (idleTimeoutMs > 0) socket.setTimeout(idleTimeoutMs);
    });
    socket.on('timeout', () => {
      if (this.events.destinationInUse?.(destination) === true) {
        socket.setTimeout(idleTimeoutMs);
        return;
      }
      this.logger.debug({ remote, trunk: this.events.trunkOf?.(destination) }, 'idle SIP TLS connection closed');
      this.retire(conn);
    });
  }

  protected override connectionError(conn: Connection, err: Error): void {
    const code = (err as Error & { code?: string }).code ?? '';
    const destination = conn.destination;
    const remote = destination === undefined ? remoteOf(conn) : `${destination.host}:${destination.port}`;
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
    const trunk = destination === undefined ? undefined : this.events.trunkOf?.(destination);
    if (reason === undefined) {
      this.logger.warn({ remote, trunk, tls_code: code, err: err.message }, 'SIP TLS connection error');
      return;
    }
    if (destination !== undefined) this.failing.set(destinationKey(destination), `${reason}: ${err.message}`);
    // Which CA bundle refused the certificate: with per-trunk bundles, the first thing to check.
    const ca = reason === 'certificate invalid' && destination !== undefined ? { ca_file: this.profileOf(destination).caFile ?? "Node's trust store" } : {};
    this.logger.warn({ remote, trunk, tls_code: code, reason, ...ca, err: err.message }, `SIP TLS ${reason}`);
  }
}

