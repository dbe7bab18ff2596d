/**
 * Which transport a trunk URI asks for, read once for config validation (boot) and for the stacks (calls).
 *
 * RFC 3261 19.1.1 / 26.2 and RFC 5630 3.1: a `sips:` URI means TLS on every hop, whatever its transport
 * parameter names (`transport=tcp` is TLS over TCP; `transport=tls` is the deprecated spelling of the same);
 * `sips:` over UDP would be DTLS, which no backend here speaks. A `sip:` URI with `transport=tls` asks for TLS
 * to the next hop only (scheme `sip`). No parameter: UDP for `sip:`, TLS over TCP for `sips:`. A trunk names its
 * port, or gets 5060 (5061 for TLS); the embedded stack first asks DNS SRV for a host name without a port
 * (RFC 3263 4.2, sip-locator.ts), under the service name `srvService` gives.
 */
export type TrunkTransport = 'udp' | 'tcp' | 'tls';

export interface TrunkUriTransport {
  readonly scheme: 'sip' | 'sips';
  readonly transport: TrunkTransport;
  /** The port when the URI names none. */
  readonly defaultPort: number;
}

/**
 * The scheme and transport of a trunk URI, or a sentence saying why it has none this code can use. `transportParam`
 * is the URI's `transport` parameter (any case), undefined when absent.
 */
export function trunkUriTransport(scheme: string, transportParam: string | undefined): TrunkUriTransport | string {
  const s = scheme.toLowerCase();
  if (s !== 'sip' && s !== 'sips') return `scheme ${scheme}: must be sip or sips`;
  const t = transportParam?.toLowerCase();
  if (s === 'sips') {
    if (t === undefined || t === 'tcp' || t === 'tls') return { scheme: 'sips', transport: 'tls', defaultPort: 5061 };
    return `a sips: URI needs TLS over TCP (transport=tcp or none), not transport=${t}`;
  }
  if (t === undefined || t === 'udp') return { scheme: 'sip', transport: 'udp', defaultPort: 5060 };
  if (t === 'tcp') return { scheme: 'sip', transport: 'tcp', defaultPort: 5060 };
  if (t === 'tls') return { scheme: 'sip', transport: 'tls', defaultPort: 5061 };
  return `unsupported transport ${t} (udp, tcp or tls)`;
}

/** The same from a whole URI string (config validation); undefined when it is no SIP URI at all (the regex says so). */
export function trunkUriTransportOf(uri: string): TrunkUriTransport | string | undefined {
  const m = /^(sips?):[^;?]*((?:;[^?]*)?)/i.exec(uri);
  if (m === null) return undefined;
  const param = /;\s*transport\s*=\s*([^;\s]*)/i.exec(m[2] ?? '');
  return trunkUriTransport(m[1] ?? '', param?.[1]);
}

/** RFC 3263 4.2 SRV prefix for a transport: TLS is `_sips._tcp` for a `sip:` URI with transport=tls too. */
export function srvService(transport: TrunkTransport): string {
  return transport === 'tls' ? '_sips._tcp' : transport === 'tcp' ? '_sip._tcp' : '_sip._udp';
}

/** Does this trunk URI ask for TLS (`sips:`, `;transport=tls`)? */
export function trunkNeedsTls(uri: string): boolean {
  const t = trunkUriTransportOf(uri);
  return typeof t === 'object' && t.transport === 'tls';
}
