import { randomFillSync } from 'node:crypto';

const POOL_SIZE = 4096;
const pool = Buffer.alloc(POOL_SIZE);
let poolOffset = POOL_SIZE;

/** Random lower-case hex string of `bytes` random bytes, from a pooled buffer (cheap at high call rates). */
export function randomHex(bytes: number): string {
  if (poolOffset + bytes > POOL_SIZE) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const s = pool.toString('hex', poolOffset, poolOffset + bytes);
  poolOffset += bytes;
  return s;
}

/** RFC 3261 8.1.1.7 magic cookie + random. */
export function newBranch(): string {
  return 'z9hG4bK' + randomHex(10);
}

export function newTag(): string {
  return randomHex(6);
}

export function newCallId(): string {
  return randomHex(16);
}

/** IPv6 literal in brackets for URIs and Via; other hosts unchanged. */
export function hostForUri(host: string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

/** Strip URI brackets from an IPv6 reference for socket APIs. */
export function hostForSocket(host: string): string {
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * The user part of a Request-URI is the destination phone number: logs keep
 * its first 5 characters (country and range, enough to debug routing) only.
 * So does any other run of 6 or more digits (a display name, a header
 * parameter carrying the number); addresses and ports have shorter ones.
 */
export function maskUser(startLine: string): string {
  const mask = (_m: string, scheme: string, head: string) => `${scheme}${head}***`;
  return startLine
    .replace(/(sips?:)([^@;>\s]{0,5})[^@;>\s]*(?=@)/gi, mask)
    .replace(/(tel:)([^;>\s]{0,5})[^;>\s]*/gi, mask)
    .replace(/(\+?\d{4})\d{2,}/g, '$1***');
}
