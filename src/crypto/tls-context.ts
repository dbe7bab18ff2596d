/**
 * A TLS client's secure context from PEM files (a CA bundle, a client certificate and its key), for SIP trunks
 * (sip/tls-transport.ts) and SMSCs (sms/gateway.ts) alike: each file checked when loaded, at start, so that a bad one
 * is a ConfigError naming it and its owner, not a handshake failure at the first connection.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import { ConfigError } from '../errors/app-error.js';

export interface TlsFiles {
  /** PEM CA bundle the server's certificate must chain to; none: Node's trust store. */
  caFile?: string | undefined;
  /** PEM client certificate and its key (mutual TLS). */
  certFile?: string | undefined;
  keyFile?: string | undefined;
}

/** The files' secure context; `what` names their owner in the ConfigError of a file that is not what it should be. */
export function secureContextOf(files: TlsFiles, what: string): tls.SecureContext {
  const { caFile, certFile, keyFile } = files;
  const refused = (problem: string, err: unknown): ConfigError =>
    new ConfigError([`${what}: ${problem}: ${err instanceof Error ? err.message : String(err)}`]);
  let ca: string[] | undefined;
  try {
    ca = caFile === undefined ? undefined : caBundle(caFile);
  } catch (err) {
    throw refused(`cannot load the CA bundle ${caFile}`, err);
  }
  try {
    return tls.createSecureContext({
      ca,
      cert: certFile === undefined ? undefined : readFileSync(certFile),
      key: keyFile === undefined ? undefined : readFileSync(keyFile),
    });
  } catch (err) {
    throw refused(`cannot load the client certificate ${certFile} and its key ${keyFile}`, err);
  }
}

/** The certificates of a PEM bundle, each one parsed: a file without any, or with one that does not parse, throws. */
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
