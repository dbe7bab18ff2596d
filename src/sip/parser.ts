/**
 * RFC 3261 message parser (section 7 and 25). Works from a Buffer with indexOf
 * scans; no exceptions escape: every entry point returns a result object or
 * `undefined` for malformed input.
 */
import {
  headerKey,
  canonicalName,
  type CSeq,
  type NameAddr,
  type ParsedMessage,
  type ParsedFields,
  type SipHeader,
  type Via,
} from './message.js';

/** Largest body accepted (bytes). SIP over UDP rarely exceeds 1,500 bytes. */
export const MAX_BODY_BYTES = 64 * 1024;
/** Largest start line + headers accepted (bytes). */
export const MAX_HEAD_BYTES = 16 * 1024;

export type ParseResult = { ok: true; message: ParsedMessage } | { ok: false; reason: string };

export interface ParseOptions {
  /**
   * true (default): the buffer is one UDP datagram; a missing Content-Length
   * means "the rest of the datagram". false: the buffer is one framed stream
   * message; Content-Length is required.
   */
  datagram?: boolean;
}

/** Headers whose comma-separated values are split into separate fields (RFC 3261 7.3.1). */
const LIST_HEADERS = new Set(['via', 'route', 'record-route', 'contact']);

const TOKEN_CHARS = (() => {
  const t = new Uint8Array(128);
  const extra = "-.!%*_+`'~";
  for (let c = 0; c < 128; c++) {
    const ch = String.fromCharCode(c);
    if ((c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || extra.includes(ch)) t[c] = 1;
  }
  return t;
})();

export function isToken(s: string): boolean {
  if (s.length === 0) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 128 || TOKEN_CHARS[c] !== 1) return false;
  }
  return true;
}

function fail(reason: string): { ok: false; reason: string } {
  return { ok: false, reason };
}

/** Index just past leading CR/LF bytes (keep-alives and stray line ends are allowed before a message). */
function skipLeadingCrlf(data: Buffer, from: number): number {
  let i = from;
  while (i < data.length && (data[i] === 13 || data[i] === 10)) i++;
  return i;
}

/** Locate the empty line ending the head: returns [headEnd, bodyStart] or undefined. */
function findHeadEnd(data: Buffer, start: number): [number, number] | undefined {
  const crlf = data.indexOf('\r\n\r\n', start, 'latin1');
  const lf = data.indexOf('\n\n', start, 'latin1');
  if (crlf === -1 && lf === -1) return undefined;
  if (lf === -1 || (crlf !== -1 && crlf < lf)) return [crlf, crlf + 4];
  return [lf, lf + 2];
}

/** Strict non-negative decimal integer, or undefined. */
function parseUint(s: string, max: number): number | undefined {
  if (s.length === 0 || s.length > 10) return undefined;
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i) - 48;
    if (c < 0 || c > 9) return undefined;
    n = n * 10 + c;
  }
  return n <= max ? n : undefined;
}

/**
 * Strip SP and HTAB at both ends: SIP's LWS (RFC 3261 25.1). Not String.trim(),
 * which also strips U+FEFF, U+00A0 and other Unicode spaces that are part of a
 * UTF-8 header value (RFC 4475 3.1.1.2 starts one with a byte order mark).
 */
function trimLws(s: string): string {
  let a = 0;
  let b = s.length;
  while (a < b && (s.charCodeAt(a) === 32 || s.charCodeAt(a) === 9)) a++;
  while (b > a && (s.charCodeAt(b - 1) === 32 || s.charCodeAt(b - 1) === 9)) b--;
  return a === 0 && b === s.length ? s : s.slice(a, b);
}

interface Head {
  startLine: string;
  headers: SipHeader[];
}

/** Split the head into the start line and unfolded header fields. */
function parseHead(head: string): Head | string {
  let pos = 0;
  const lines: string[] = [];
  while (pos <= head.length) {
    let nl = head.indexOf('\n', pos);
    if (nl === -1) nl = head.length;
    let end = nl;
    if (end > pos && head.charCodeAt(end - 1) === 13) end--;
    const line = head.slice(pos, end);
    pos = nl + 1;
    const first = line.charCodeAt(0);
    if ((first === 32 || first === 9) && lines.length > 1) {
      // Header folding (RFC 3261 7.3.1): continuation of the previous line.
      lines[lines.length - 1] += ' ' + trimLws(line);
    } else if (line.length > 0) {
      lines.push(line);
    }
  }
  const startLine = lines[0];
  if (startLine === undefined) return 'empty message';
  const headers: SipHeader[] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i] as string;
    const colon = line.indexOf(':');
    if (colon <= 0) return 'header line without name';
    const name = line.slice(0, colon).trim();
    if (!isToken(name)) return 'bad header name';
    const key = headerKey(name);
    const value = trimLws(line.slice(colon + 1));
    const display = name.length === 1 ? canonicalName(key) : name;
    if (LIST_HEADERS.has(key) && value.indexOf(',') !== -1 && value !== '*') {
      for (const part of splitCommaList(value)) headers.push({ key, name: display, value: part });
    } else {
      headers.push({ key, name: display, value });
    }
  }
  return { startLine, headers };
}

/**
 * Split a comma-separated header value, respecting quoted strings and <...>.
 * Empty elements are dropped.
 */
export function splitCommaList(value: string): string[] {
  const out: string[] = [];
  let inQuotes = false;
  let inAngle = false;
  let start = 0;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (inQuotes) {
      if (c === 92) i++; // backslash escape
      else if (c === 34) inQuotes = false;
    } else if (c === 34) inQuotes = true;
    else if (c === 60) inAngle = true;
    else if (c === 62) inAngle = false;
    else if (c === 44 && !inAngle) {
      const part = value.slice(start, i).trim();
      if (part.length > 0) out.push(part);
      start = i + 1;
    }
  }
  const last = value.slice(start).trim();
  if (last.length > 0) out.push(last);
  return out;
}

/** Parse `;a=b;c;d="q"` parameters (leading `;` optional). Names are lower-cased; quotes removed. */
export function parseParams(s: string): Record<string, string | null> {
  const params: Record<string, string | null> = {};
  let i = 0;
  while (i < s.length) {
    while (i < s.length && (s[i] === ';' || s[i] === ' ' || s[i] === '\t')) i++;
    if (i >= s.length) break;
    let j = i;
    while (j < s.length && s[j] !== '=' && s[j] !== ';') j++;
    const name = s.slice(i, j).trim().toLowerCase();
    if (j < s.length && s[j] === '=') {
      j++;
      while (j < s.length && (s[j] === ' ' || s[j] === '\t')) j++;
      if (s[j] === '"') {
        let k = j + 1;
        let v = '';
        while (k < s.length && s[k] !== '"') {
          if (s[k] === '\\' && k + 1 < s.length) k++;
          v += s[k];
          k++;
        }
        if (name) params[name] = v;
        i = s.indexOf(';', k);
        if (i === -1) break;
      } else {
        let k = s.indexOf(';', j);
        if (k === -1) k = s.length;
        if (name) params[name] = s.slice(j, k).trim();
        i = k;
      }
    } else {
      if (name) params[name] = null;
      i = j;
    }
  }
  return params;
}

/** `host[:port]` with IPv6 references in brackets. Returns undefined when malformed. */
export function parseHostPort(s: string): { host: string; port: number | undefined } | undefined {
  const t = s.trim();
  if (t.length === 0) return undefined;
  if (t[0] === '[') {
    const close = t.indexOf(']');
    if (close === -1) return undefined;
    const host = t.slice(0, close + 1);
    const rest = t.slice(close + 1);
    if (rest.length === 0) return { host, port: undefined };
    if (rest[0] !== ':') return undefined;
    const port = parseUint(rest.slice(1), 65535);
    // Port 0 is no port to send to (a Contact, Record-Route or Via naming it is malformed).
    return port === undefined || port === 0 ? undefined : { host, port };
  }
  const colon = t.indexOf(':');
  if (colon === -1) return /[\s;,<>"]/.test(t) ? undefined : { host: t, port: undefined };
  const port = parseUint(t.slice(colon + 1), 65535);
  const host = t.slice(0, colon);
  if (port === undefined || port === 0 || host.length === 0) return undefined;
  return { host, port };
}

/** Parse one Via value: `SIP/2.0/UDP host:port;branch=z9hG4bK...;rport`. */
export function parseVia(value: string): Via | undefined {
  const semi = value.indexOf(';');
  const sent = semi === -1 ? value : value.slice(0, semi);
  // sent-protocol may contain LWS around the slashes.
  const slash1 = sent.indexOf('/');
  const slash2 = slash1 === -1 ? -1 : sent.indexOf('/', slash1 + 1);
  if (slash2 === -1) return undefined;
  if (sent.slice(0, slash1).trim().toUpperCase() !== 'SIP') return undefined;
  if (sent.slice(slash1 + 1, slash2).trim() !== '2.0') return undefined;
  const rest = sent.slice(slash2 + 1).trimStart();
  let sp = 0;
  while (sp < rest.length && rest[sp] !== ' ' && rest[sp] !== '\t') sp++;
  const transport = rest.slice(0, sp).toUpperCase();
  if (!isToken(transport)) return undefined;
  const hp = parseHostPort(rest.slice(sp));
  if (hp === undefined) return undefined;
  // via-params are generic-params: each a token, never empty (`;;` is malformed, RFC 4475 3.1.2.1).
  if (semi !== -1 && !value.slice(semi + 1).split(';').every((p) => isToken((p.split('=')[0] ?? '').trim()))) return undefined;
  const params = semi === -1 ? {} : parseParams(value.slice(semi));
  const branch = params['branch'];
  return { transport, host: hp.host, port: hp.port, params, branch: branch ?? undefined };
}

/** Parse name-addr (`"Name" <uri>;tag=x`) or addr-spec (`uri;tag=x`) as in From/To/Contact/Route. */
export function parseNameAddr(value: string): NameAddr | undefined {
  const v = value.trim();
  if (v.length === 0) return undefined;
  let displayName: string | undefined;
  let uri: string;
  let paramsPart: string;
  const lt = findUnquoted(v, '<');
  if (lt !== -1) {
    const gt = v.indexOf('>', lt);
    if (gt === -1) return undefined;
    const dn = v.slice(0, lt).trim();
    if (dn.length > 0) {
      const quoted = dn[0] === '"' && dn.endsWith('"') && dn.length >= 2;
      // display-name = *(token LWS) / quoted-string (RFC 3261 25.1): `Bell, Alexander <sip:...>` is not one.
      if (!quoted && !dn.split(/[ \t]+/).every(isToken)) return undefined;
      displayName = quoted ? unquote(dn) : dn;
    }
    uri = v.slice(lt + 1, gt).trim();
    paramsPart = v.slice(gt + 1);
  } else {
    // addr-spec: parameters after the URI belong to the header (RFC 3261 20.10).
    if (v[0] === '"') return undefined;
    const semi = v.indexOf(';');
    // LWS may precede the SEMI of a header parameter (RFC 3261 25.1, RFC 4475 3.1.1.1).
    uri = (semi === -1 ? v : v.slice(0, semi)).trim();
    paramsPart = semi === -1 ? '' : v.slice(semi);
    if (uri.indexOf(' ') !== -1) return undefined;
  }
  if (uri.length === 0 || uri.indexOf(':') === -1) return undefined;
  const params = parseParams(paramsPart);
  const tag = params['tag'];
  return { displayName, uri, params, tag: tag ?? undefined };
}

function findUnquoted(s: string, ch: string): number {
  let inQuotes = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (inQuotes) {
      if (c === '\\') i++;
      else if (c === '"') inQuotes = false;
    } else if (c === '"') inQuotes = true;
    else if (c === ch) return i;
  }
  return -1;
}

function unquote(s: string): string {
  return s.slice(1, -1).replace(/\\(.)/g, '$1');
}

/** `CSeq: 4711 INVITE` */
export function parseCSeq(value: string): CSeq | undefined {
  const v = value.trim();
  let sp = 0;
  while (sp < v.length && v[sp] !== ' ' && v[sp] !== '\t') sp++;
  const seq = parseUint(v.slice(0, sp), 0x7fffffff);
  const method = v.slice(sp).trim();
  if (seq === undefined || !isToken(method)) return undefined;
  return { seq, method };
}

export interface SipUri {
  readonly scheme: 'sip' | 'sips';
  readonly user: string | undefined;
  readonly host: string;
  readonly port: number | undefined;
  /** URI parameters, lower-case names. */
  readonly params: Readonly<Record<string, string | null>>;
}

/** Parse `sip:user@host:port;params?headers`. */
export function parseSipUri(uri: string): SipUri | undefined {
  const colon = uri.indexOf(':');
  if (colon === -1) return undefined;
  const scheme = uri.slice(0, colon).toLowerCase();
  if (scheme !== 'sip' && scheme !== 'sips') return undefined;
  let rest = uri.slice(colon + 1);
  const q = rest.indexOf('?');
  if (q !== -1) rest = rest.slice(0, q);
  let user: string | undefined;
  const at = rest.lastIndexOf('@');
  if (at !== -1) {
    const userinfo = rest.slice(0, at);
    const pw = userinfo.indexOf(':');
    user = pw === -1 ? userinfo : userinfo.slice(0, pw);
    rest = rest.slice(at + 1);
  }
  const semi = rest.indexOf(';');
  const hp = parseHostPort(semi === -1 ? rest : rest.slice(0, semi));
  if (hp === undefined) return undefined;
  const params = semi === -1 ? {} : parseParams(rest.slice(semi));
  return { scheme, user, host: hp.host, port: hp.port, params };
}

function extractFields(headers: SipHeader[]): ParsedFields | string {
  let callId: string | undefined;
  let cseqV: string | undefined;
  let viaV: string | undefined;
  let fromV: string | undefined;
  let toV: string | undefined;
  // Call-ID, CSeq, From and To are single-valued (RFC 3261 7.3.1, 20): a second one makes the
  // message ambiguous (RFC 4475 3.3.8), and matching it by whichever copy comes first would
  // pair a response or a CANCEL with the wrong call. Such a message is rejected.
  for (const h of headers) {
    switch (h.key) {
      case 'call-id':
        if (callId !== undefined) return 'multiple Call-ID header fields';
        callId = h.value;
        break;
      case 'cseq':
        if (cseqV !== undefined) return 'multiple CSeq header fields';
        cseqV = h.value;
        break;
      case 'via':
        viaV ??= h.value;
        break;
      case 'from':
        if (fromV !== undefined) return 'multiple From header fields';
        fromV = h.value;
        break;
      case 'to':
        if (toV !== undefined) return 'multiple To header fields';
        toV = h.value;
        break;
    }
  }
  if (callId === undefined || callId.length === 0) return 'missing Call-ID';
  if (cseqV === undefined) return 'missing CSeq';
  if (viaV === undefined) return 'missing Via';
  if (fromV === undefined) return 'missing From';
  if (toV === undefined) return 'missing To';
  const cseq = parseCSeq(cseqV);
  if (cseq === undefined) return 'bad CSeq';
  const via = parseVia(viaV);
  if (via === undefined) return 'bad Via';
  const from = parseNameAddr(fromV);
  if (from === undefined) return 'bad From';
  const to = parseNameAddr(toV);
  if (to === undefined) return 'bad To';
  return { callId, cseq, via, from, to };
}

/**
 * Parse one SIP message. On UDP pass the whole datagram; bytes after
 * Content-Length are ignored (RFC 3261 18.3). Never throws.
 */
export function parseMessage(data: Buffer, options: ParseOptions = {}): ParseResult {
  try {
    return parseUnsafe(data, options.datagram ?? true);
  } catch (err) {
    return fail('parser exception: ' + (err instanceof Error ? err.message : String(err)));
  }
}

function parseUnsafe(data: Buffer, datagram: boolean): ParseResult {
  const start = skipLeadingCrlf(data, 0);
  if (start >= data.length) return fail('empty message');
  const ends = findHeadEnd(data, start);
  let headEnd: number;
  let bodyStart: number;
  if (ends === undefined) {
    // A datagram whose head ends with a single CRLF and no body is tolerated.
    if (!datagram) return fail('no end of headers');
    headEnd = data.length;
    bodyStart = data.length;
  } else {
    [headEnd, bodyStart] = ends;
  }
  if (headEnd - start > MAX_HEAD_BYTES) return fail('headers too large');
  const head = parseHead(data.toString('utf8', start, headEnd));
  if (typeof head === 'string') return fail(head);

  // Content-Length (RFC 3261 18.3, 20.14)
  let contentLength: number | undefined;
  for (const h of head.headers) {
    if (h.key !== 'content-length') continue;
    const n = parseUint(h.value, Number.MAX_SAFE_INTEGER);
    if (n === undefined) return fail('bad Content-Length');
    // Single-valued: with two the body's end is unknowable (RFC 4475 3.3.9), even when they agree.
    if (contentLength !== undefined) return fail('multiple Content-Length header fields');
    contentLength = n;
  }
  const available = data.length - bodyStart;
  let bodyLength: number;
  if (contentLength === undefined) {
    if (!datagram) return fail('missing Content-Length on stream transport');
    bodyLength = available;
  } else {
    if (contentLength > MAX_BODY_BYTES) return fail('Content-Length too large');
    if (contentLength > available) return fail('body shorter than Content-Length');
    bodyLength = contentLength;
  }
  if (bodyLength > MAX_BODY_BYTES) return fail('body too large');
  const bodyBytes = bodyLength > 0 ? data.subarray(bodyStart, bodyStart + bodyLength) : undefined;
  const body = bodyBytes?.toString('utf8');

  const fields = extractFields(head.headers);
  if (typeof fields === 'string') return fail(fields);

  const line = head.startLine;
  if (line.length >= 8 && line.slice(0, 8).toUpperCase() === 'SIP/2.0 ') {
    // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
    const codeEnd = line.indexOf(' ', 8);
    const code = parseUint(codeEnd === -1 ? line.slice(8) : line.slice(8, codeEnd), 699);
    if (code === undefined || code < 100) return fail('bad status code');
    const reason = codeEnd === -1 ? '' : line.slice(codeEnd + 1);
    return {
      ok: true,
      message: { kind: 'response', status: code, reason, headers: head.headers, body, bodyBytes, ...fields },
    };
  }
  // Request-Line = Method SP Request-URI SP SIP-Version
  const sp1 = line.indexOf(' ');
  const sp2 = sp1 === -1 ? -1 : line.indexOf(' ', sp1 + 1);
  if (sp2 === -1) return fail('bad start line');
  const method = line.slice(0, sp1);
  const uri = line.slice(sp1 + 1, sp2);
  const version = line.slice(sp2 + 1);
  if (!isToken(method)) return fail('bad method');
  if (version.toUpperCase() !== 'SIP/2.0') return fail('bad SIP version');
  // An absoluteURI: a scheme, a colon, no LWS and no angle brackets (RFC 3261 25.1; RFC 4475 3.1.2.7, 3.1.2.8).
  if (!/^[A-Za-z][A-Za-z0-9+.-]*:[^\s<>]*$/.test(uri)) return fail('bad Request-URI');
  if (fields.cseq.method !== method) return fail('CSeq method does not match request method');
  return { ok: true, message: { kind: 'request', method, uri, headers: head.headers, body, bodyBytes, ...fields } };
}

/** Content-Length value from a raw head, `undefined` if absent, `null` if malformed. */
function headContentLength(head: string): number | undefined | null {
  // Folded lines (a line starting with SP or HT continues the one before, RFC 3261 7.3.1) are unfolded first, as
  // parseMessage does: a folded Content-Length value counts, and a continuation line is never a header of its own.
  const unfolded = /\r?\n[ \t]/.test(head) ? head.replace(/\r?\n[ \t]+/g, ' ') : head;
  let pos = 0;
  let found: number | undefined;
  while (pos < unfolded.length) {
    let nl = unfolded.indexOf('\n', pos);
    if (nl === -1) nl = unfolded.length;
    const line = unfolded.slice(pos, nl);
    pos = nl + 1;
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const key = headerKey(line.slice(0, colon).trim());
    if (key !== 'content-length') continue;
    const n = parseUint(line.slice(colon + 1).trim(), Number.MAX_SAFE_INTEGER);
    if (n === undefined || found !== undefined) return null;
    found = n;
  }
  return found;
}

/**
 * `messages`: those framed and parsed. `dropped`: why each message framed but not parsed was dropped (a bad header in
 * it: the stream is still in step, the next message is read). `error`: the stream cannot be framed any further.
 */
export type FramerResult = { messages: ParsedMessage[]; dropped?: string[]; error?: string };

/**
 * Frames a byte stream (TCP) into SIP messages using Content-Length
 * (RFC 3261 18.3). After an `error` (no usable Content-Length, a head or body
 * too large) the connection must be closed: the framer cannot resynchronise.
 * A message whose length is known but which does not parse is dropped alone,
 * as a malformed datagram is: the connection, shared by other calls, stays.
 */
export class StreamFramer {
  private buffer: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): FramerResult {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    const messages: ParsedMessage[] = [];
    let dropped: string[] | undefined;
    const out = (error?: string): FramerResult => ({ messages, ...(dropped ? { dropped } : {}), ...(error !== undefined ? { error } : {}) });
    for (;;) {
      const start = skipLeadingCrlf(this.buffer, 0);
      if (start > 0) this.buffer = this.buffer.subarray(start);
      if (this.buffer.length === 0) return out();
      const ends = findHeadEnd(this.buffer, 0);
      if (ends === undefined) {
        if (this.buffer.length > MAX_HEAD_BYTES) return out('headers too large');
        return out();
      }
      const [headEnd, bodyStart] = ends;
      if (headEnd > MAX_HEAD_BYTES) return out('headers too large');
      const cl = headContentLength(this.buffer.toString('latin1', 0, headEnd));
      if (cl === null) return out('bad Content-Length');
      if (cl === undefined) return out('missing Content-Length on stream transport');
      if (cl > MAX_BODY_BYTES) return out('Content-Length too large');
      const total = bodyStart + cl;
      if (this.buffer.length < total) return out();
      const frame = this.buffer.subarray(0, total);
      this.buffer = this.buffer.subarray(total);
      const result = parseMessage(frame, { datagram: false });
      if (result.ok) messages.push(result.message);
      else (dropped ??= []).push(result.reason);
    }
  }
}
