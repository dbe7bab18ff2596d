/**
 * HTTP Digest authentication for SIP (RFC 3261 22.4, RFC 2617, RFC 7616).
 * MD5 / MD5-sess, plus SHA-256 / SHA-256-sess; qop=auth, auth-int or none.
 */
import { createHash, randomBytes } from 'node:crypto';
import { splitCommaList } from './parser.js';

export interface DigestChallenge {
  realm: string;
  nonce: string;
  opaque: string | undefined;
  /** Upper-case algorithm, "MD5" when absent. */
  algorithm: string;
  /** Offered qop values, lower case; empty when the server sent none (RFC 2069 mode). */
  qop: string[];
  stale: boolean;
}

export interface DigestCredentials {
  username: string;
  password: string;
}

export interface DigestRequest {
  method: string;
  uri: string;
  /** Entity body, only used for qop=auth-int. */
  body?: string;
}

export interface DigestOptions {
  /** Client nonce; random when omitted. */
  cnonce?: string;
  /** Nonce count; 1 when omitted. */
  nc?: number;
}

const SUPPORTED_ALGORITHMS = new Set(['MD5', 'MD5-SESS', 'SHA-256', 'SHA-256-SESS']);

/** Parse a WWW-Authenticate / Proxy-Authenticate value. Undefined if not Digest or malformed. */
export function parseDigestChallenge(value: string): DigestChallenge | undefined {
  const v = value.trim();
  const sp = v.indexOf(' ');
  if (sp === -1 || v.slice(0, sp).toLowerCase() !== 'digest') return undefined;
  const params: Record<string, string> = {};
  for (const part of splitCommaList(v.slice(sp + 1))) {
    const eq = part.indexOf('=');
    if (eq === -1) continue;
    const name = part.slice(0, eq).trim().toLowerCase();
    let val = part.slice(eq + 1).trim();
    if (val.length >= 2 && val[0] === '"' && val.endsWith('"')) val = val.slice(1, -1).replace(/\\(.)/g, '$1');
    params[name] = val;
  }
  const realm = params['realm'];
  const nonce = params['nonce'];
  if (realm === undefined || nonce === undefined) return undefined;
  const qop = (params['qop'] ?? '')
    .split(',')
    .map((q) => q.trim().toLowerCase())
    .filter((q) => q.length > 0);
  return {
    realm,
    nonce,
    opaque: params['opaque'],
    algorithm: (params['algorithm'] ?? 'MD5').toUpperCase(),
    qop,
    stale: (params['stale'] ?? '').toLowerCase() === 'true',
  };
}

export function isSupportedChallenge(challenge: DigestChallenge): boolean {
  return SUPPORTED_ALGORITHMS.has(challenge.algorithm);
}

/** Why a 401/407 was not answered, as the warn lines of both SIP backends say it. */
export const AUTH_NOT_CONFIGURED = 'the trunk asks for digest credentials: set sip.trunks[].auth';
export const AUTH_REFUSED = 'the trunk refused our digest credentials (sip.trunks[].auth)';
export const AUTH_UNUSABLE = "the trunk's challenge offers no Digest this engine can answer (algorithm MD5 or SHA-256, -sess or not)";

/** What a 401/407 offers, for a log line: `realm="…" algorithm=…` per challenge (a scheme other than Digest by name). */
export function offeredChallenges(values: readonly string[]): string[] {
  return values.map((value) => {
    const challenge = parseDigestChallenge(value);
    return challenge ? `realm="${challenge.realm}" algorithm=${challenge.algorithm}` : (value.trim().split(/\s/, 1)[0] ?? '');
  });
}

/**
 * The challenges of a 401/407 to answer: per realm, the topmost one whose algorithm is supported (RFC 8760 2.4: a
 * server offering several, say SHA-256 then MD5, lists them in its order of preference). Header order is kept.
 */
export function usableChallenges(values: readonly string[]): DigestChallenge[] {
  const byRealm = new Map<string, DigestChallenge>();
  for (const value of values) {
    const challenge = parseDigestChallenge(value);
    if (challenge === undefined || !isSupportedChallenge(challenge) || byRealm.has(challenge.realm)) continue;
    byRealm.set(challenge.realm, challenge);
  }
  return [...byRealm.values()];
}

function hash(algorithm: string, data: string): string {
  const alg = algorithm.startsWith('SHA-256') ? 'sha256' : 'md5';
  return createHash(alg).update(data, 'utf8').digest('hex');
}

function quote(s: string): string {
  return '"' + s.replace(/(["\\])/g, '\\$1') + '"';
}

export interface DigestResponse {
  /** The `response` value (request-digest). */
  response: string;
  /** Complete Authorization / Proxy-Authorization header value. */
  header: string;
}

/**
 * Compute the digest response for a challenge (RFC 2617 3.2.2, RFC 7616 3.4.1).
 * With qop offered, "auth" is preferred over "auth-int".
 */
export function computeDigest(
  challenge: DigestChallenge,
  credentials: DigestCredentials,
  request: DigestRequest,
  options: DigestOptions = {},
): DigestResponse {
  const alg = challenge.algorithm;
  const qop = challenge.qop.includes('auth') ? 'auth' : challenge.qop.includes('auth-int') ? 'auth-int' : undefined;
  const cnonce = options.cnonce ?? randomBytes(8).toString('hex');
  const nc = (options.nc ?? 1).toString(16).padStart(8, '0');
  let ha1 = hash(alg, `${credentials.username}:${challenge.realm}:${credentials.password}`);
  if (alg.endsWith('-SESS')) ha1 = hash(alg, `${ha1}:${challenge.nonce}:${cnonce}`);
  const ha2 =
    qop === 'auth-int'
      ? hash(alg, `${request.method}:${request.uri}:${hash(alg, request.body ?? '')}`)
      : hash(alg, `${request.method}:${request.uri}`);
  const response =
    qop === undefined
      ? hash(alg, `${ha1}:${challenge.nonce}:${ha2}`)
      : hash(alg, `${ha1}:${challenge.nonce}:${nc}:${cnonce}:${qop}:${ha2}`);
  let header =
    `Digest username=${quote(credentials.username)}, realm=${quote(challenge.realm)}, ` +
    `nonce=${quote(challenge.nonce)}, uri=${quote(request.uri)}, response=${quote(response)}, algorithm=${challenge.algorithm}`;
  if (challenge.opaque !== undefined) header += `, opaque=${quote(challenge.opaque)}`;
  if (qop !== undefined) header += `, qop=${qop}, nc=${nc}, cnonce=${quote(cnonce)}`;
  return { response, header };
}
