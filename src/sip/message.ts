/**
 * SIP message model and serializer (RFC 3261 section 7).
 *
 * One representation serves both directions: parsed messages (see parser.ts)
 * additionally carry the few header fields every layer needs already decoded
 * (Call-ID, CSeq, top Via, From, To).
 */

/** A header field. `key` is the lower-case long form ("v" -> "via"), `name` is what is written on the wire. */
export interface SipHeader {
  readonly key: string;
  readonly name: string;
  readonly value: string;
}

export interface SipRequest {
  readonly kind: 'request';
  readonly method: string;
  readonly uri: string;
  readonly headers: SipHeader[];
  readonly body: string | undefined;
}

export interface SipResponse {
  readonly kind: 'response';
  readonly status: number;
  readonly reason: string;
  readonly headers: SipHeader[];
  readonly body: string | undefined;
}

export type SipMessage = SipRequest | SipResponse;

/** Parsed `Via` value (RFC 3261 20.42, RFC 3581 rport). */
export interface Via {
  /** Upper-case transport: "UDP", "TCP", ... */
  readonly transport: string;
  readonly host: string;
  readonly port: number | undefined;
  /** Lower-case parameter names; `null` for a parameter without value (e.g. bare `rport`). */
  readonly params: Readonly<Record<string, string | null>>;
  readonly branch: string | undefined;
}

/** Parsed `From` / `To` / `Contact` / `Route` value (name-addr or addr-spec). */
export interface NameAddr {
  readonly displayName: string | undefined;
  /** The URI without angle brackets. */
  readonly uri: string;
  /** Header parameters (after the URI / closing `>`), lower-case names. */
  readonly params: Readonly<Record<string, string | null>>;
  readonly tag: string | undefined;
}

export interface CSeq {
  readonly seq: number;
  readonly method: string;
}

/** Fields every parsed message has, decoded once by the parser. */
export interface ParsedFields {
  readonly callId: string;
  readonly cseq: CSeq;
  /** Top-most Via. */
  readonly via: Via;
  readonly from: NameAddr;
  readonly to: NameAddr;
  /**
   * The body's octets exactly as received (Content-Length of them), a view of the
   * input buffer. `body` is their UTF-8 decoding, which replaces octets that are
   * not UTF-8 (a binary MIME part, RFC 4475 3.1.1.11); use these when that matters.
   */
  readonly bodyBytes?: Buffer | undefined;
}

export type ParsedRequest = SipRequest & ParsedFields;
export type ParsedResponse = SipResponse & ParsedFields;
export type ParsedMessage = ParsedRequest | ParsedResponse;

/** Compact forms (RFC 3261 7.3.3 and later RFCs) -> lower-case long names. */
export const COMPACT_FORMS: Readonly<Record<string, string>> = {
  a: 'accept-contact',
  b: 'referred-by',
  c: 'content-type',
  d: 'request-disposition',
  e: 'content-encoding',
  f: 'from',
  i: 'call-id',
  j: 'reject-contact',
  k: 'supported',
  l: 'content-length',
  m: 'contact',
  n: 'identity-info',
  o: 'event',
  r: 'refer-to',
  s: 'subject',
  t: 'to',
  u: 'allow-events',
  v: 'via',
  x: 'session-expires',
  y: 'identity',
};

/** Conventional spelling of well-known headers, keyed by lower-case long name. */
const CANONICAL_NAMES: Readonly<Record<string, string>> = {
  'accept-contact': 'Accept-Contact',
  'allow-events': 'Allow-Events',
  'call-id': 'Call-ID',
  'content-encoding': 'Content-Encoding',
  'content-length': 'Content-Length',
  'content-type': 'Content-Type',
  'cseq': 'CSeq',
  'identity-info': 'Identity-Info',
  'max-forwards': 'Max-Forwards',
  'mime-version': 'MIME-Version',
  'p-asserted-identity': 'P-Asserted-Identity',
  'proxy-authenticate': 'Proxy-Authenticate',
  'proxy-authorization': 'Proxy-Authorization',
  'record-route': 'Record-Route',
  'refer-to': 'Refer-To',
  'referred-by': 'Referred-By',
  'reject-contact': 'Reject-Contact',
  'request-disposition': 'Request-Disposition',
  'session-expires': 'Session-Expires',
  'user-agent': 'User-Agent',
  'www-authenticate': 'WWW-Authenticate',
};

/** Lower-case long name of a header name as written (compact forms expanded). */
export function headerKey(name: string): string {
  const lower = name.toLowerCase();
  if (lower.length === 1) return COMPACT_FORMS[lower] ?? lower;
  return lower;
}

/** Conventional display name for a header key ("call-id" -> "Call-ID", "x-foo" -> "X-Foo"). */
export function canonicalName(key: string): string {
  const known = CANONICAL_NAMES[key];
  if (known !== undefined) return known;
  let out = '';
  let upper = true;
  for (let i = 0; i < key.length; i++) {
    const ch = key[i] as string;
    out += upper ? ch.toUpperCase() : ch;
    upper = ch === '-';
  }
  return out;
}

/** Build a header field; `name` may be any spelling, it is written in canonical form. */
export function hdr(name: string, value: string): SipHeader {
  const key = headerKey(name);
  return { key, name: canonicalName(key), value };
}

/** First value of a header (case-insensitive, compact forms accepted), or undefined. */
export function getHeader(message: SipMessage, name: string): string | undefined {
  const key = headerKey(name);
  const headers = message.headers;
  for (let i = 0; i < headers.length; i++) {
    const h = headers[i] as SipHeader;
    if (h.key === key) return h.value;
  }
  return undefined;
}

/** Every value of a header in order. The parser already split comma-separated lists of Via/Route/Record-Route/Contact. */
export function getHeaders(message: SipMessage, name: string): string[] {
  const key = headerKey(name);
  const out: string[] = [];
  for (const h of message.headers) if (h.key === key) out.push(h.value);
  return out;
}

const CRLF = '\r\n';

function serializeHeadersAndBody(headers: readonly SipHeader[], body: string | undefined): string {
  let out = '';
  for (const h of headers) {
    if (h.key === 'content-length') continue;
    out += h.name + ': ' + h.value + CRLF;
  }
  const length = body === undefined ? 0 : Buffer.byteLength(body, 'utf8');
  out += 'Content-Length: ' + length + CRLF + CRLF;
  if (body !== undefined) out += body;
  return out;
}

/**
 * Serialize a message to wire format. Content-Length is always (re)computed from
 * the body; any Content-Length header in `headers` is ignored.
 */
export function serializeMessage(message: SipMessage): Buffer {
  const start =
    message.kind === 'request'
      ? message.method + ' ' + message.uri + ' SIP/2.0' + CRLF
      : 'SIP/2.0 ' + message.status + ' ' + message.reason + CRLF;
  return Buffer.from(start + serializeHeadersAndBody(message.headers, message.body), 'utf8');
}

/** Default reason phrases for the responses this stack generates. */
export const REASON_PHRASES: Readonly<Record<number, string>> = {
  100: 'Trying',
  180: 'Ringing',
  183: 'Session Progress',
  200: 'OK',
  400: 'Bad Request',
  404: 'Not Found',
  405: 'Method Not Allowed',
  416: 'Unsupported URI Scheme',
  420: 'Bad Extension',
  481: 'Call/Transaction Does Not Exist',
  486: 'Busy Here',
  487: 'Request Terminated',
  488: 'Not Acceptable Here',
  500: 'Server Internal Error',
  501: 'Not Implemented',
};
