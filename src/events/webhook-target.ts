import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP } from 'node:net';
import { AppError } from '../errors/app-error.js';

/** A webhook URL that must not be called: not http(s), unresolvable, or pointing inside our network. */
export class WebhookTargetError extends AppError {
  constructor(message: string) {
    super('invalid_webhook_url', message);
  }
}

/**
 * Addresses a webhook must never reach unless `webhooks.allowPrivate` (SSRF):
 * "this network", loopback, RFC 1918 private, CGNAT (RFC 6598), link-local
 * (incl. cloud metadata 169.254.169.254), IETF protocol assignments,
 * benchmarking, multicast and reserved; IPv6 unspecified, loopback, ULA
 * (RFC 4193), link-local, multicast. IPv4-mapped/NAT64 IPv6 are checked as
 * the IPv4 address they carry.
 */
const BLOCKED = new BlockList();
for (const [net, bits] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const) {
  BLOCKED.addSubnet(net, bits, 'ipv4');
}
for (const [net, bits] of [
  ['::', 128],
  ['::1', 128],
  ['fc00::', 7],
  ['fe80::', 10],
  ['ff00::', 8],
] as const) {
  BLOCKED.addSubnet(net, bits, 'ipv6');
}

/** True when `address` (an IP literal) is loopback, private, link-local, CGNAT, ULA ... */
export function isPrivateAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return BLOCKED.check(address, 'ipv4');
  if (family !== 6) return true; // not an IP at all: refuse rather than guess
  const lower = address.toLowerCase();
  // ::ffff:a.b.c.d (mapped) and 64:ff9b::a.b.c.d (NAT64) reach the IPv4 host they embed.
  const embedded = /^(?:::ffff:|64:ff9b::)(\d+\.\d+\.\d+\.\d+)$/.exec(lower);
  if (embedded) return isPrivateAddress(embedded[1]!);
  const hexMapped = /^(?:::ffff:|64:ff9b::)([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(lower);
  if (hexMapped) {
    const hi = parseInt(hexMapped[1]!, 16);
    const lo = parseInt(hexMapped[2]!, 16);
    return isPrivateAddress(`${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`);
  }
  return BLOCKED.check(lower, 'ipv6');
}

/**
 * The longest webhook URL set (admin API and CLI alike), as given and as kept (percent-encoded): receivers commonly
 * refuse longer request lines. Checked when a URL is set, not at delivery: a URL kept before the limit still goes.
 */
export const MAX_WEBHOOK_URL_LENGTH = 2048;

/** Refuses a webhook URL longer than MAX_WEBHOOK_URL_LENGTH (`url`: as given, or as it would be kept). */
export function checkWebhookUrlLength(url: string): void {
  if (url.length > MAX_WEBHOOK_URL_LENGTH) throw new WebhookTargetError(`webhook URL is ${url.length} characters long (percent-encoded); at most ${MAX_WEBHOOK_URL_LENGTH}`);
}

/** Parses and checks a webhook URL's scheme and port; the host is checked by `assertWebhookTarget`. */
export function parseWebhookUrl(url: string): URL {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new WebhookTargetError(`not a URL: ${url}`);
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') {
    throw new WebhookTargetError('webhook URL must be http:// or https://');
  }
  if (parsed.username || parsed.password) throw new WebhookTargetError('webhook URL must not carry credentials');
  // WHATWG URL takes port 0, to which no delivery can ever connect.
  if (parsed.port === '0') throw new WebhookTargetError('webhook URL port must be 1-65535');
  return parsed;
}

/**
 * Resolves a host name to every address it has (system DNS by default; tests inject their own). `signal`: the
 * delivery's deadline, for a resolver that can stop waiting (webhook-host-cache.ts); others may ignore it.
 */
export type ResolveAll = (host: string, signal?: AbortSignal) => Promise<LookupAddress[]>;

/** The system resolver (getaddrinfo, on libuv's thread pool), every address in the order it gives them. */
export function lookupAll(host: string): Promise<LookupAddress[]> {
  return new Promise((resolve, reject) =>
    dnsLookup(host, { all: true, verbatim: true }, (err, addresses) => (err ? reject(err) : resolve(addresses))),
  );
}

/** A resolver that did not answer before the delivery's deadline (`webhooks.timeoutMs`, lookup included). */
export class WebhookLookupTimeoutError extends AppError {
  constructor(host: string) {
    super('webhook_lookup_timeout', `timeout: no DNS answer for ${host} within the delivery timeout`);
  }
}

/**
 * `lookup`, given up when `signal` aborts. A system lookup cannot be cancelled (getaddrinfo runs on libuv's thread
 * pool until the resolver gives up), but the delivery waiting for it is released at the deadline.
 */
function lookupBefore(lookup: Promise<LookupAddress[]>, host: string, signal: AbortSignal | undefined): Promise<LookupAddress[]> {
  if (!signal) return lookup;
  if (signal.aborted) return Promise.reject(new WebhookLookupTimeoutError(host));
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(new WebhookLookupTimeoutError(host));
    signal.addEventListener('abort', onAbort, { once: true });
    lookup.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/**
 * Resolves the URL's host (every address) and refuses it when any address is
 * private, unless `allowPrivate`. Called when the URL is set and again before
 * each delivery; `guardedLookup` closes the window between check and connect.
 * A delivery passes its deadline's `signal`: a resolver that does not answer
 * by then fails it with `WebhookLookupTimeoutError`.
 */
export async function assertWebhookTarget(
  url: string | URL,
  allowPrivate: boolean,
  resolveAll: ResolveAll = lookupAll,
  signal?: AbortSignal,
): Promise<URL> {
  const parsed = typeof url === 'string' ? parseWebhookUrl(url) : url;
  if (allowPrivate) return parsed;
  const host = parsed.hostname.replace(/^\[(.*)\]$/, '$1');
  let addresses: LookupAddress[];
  try {
    addresses = isIP(host) ? [{ address: host, family: isIP(host) }] : await lookupBefore(resolveAll(host, signal), host, signal);
  } catch (err) {
    if (err instanceof WebhookLookupTimeoutError) throw err;
    throw new WebhookTargetError(`cannot resolve ${host}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  if (addresses.length === 0) throw new WebhookTargetError(`cannot resolve ${host}`);
  const bad = addresses.find((a) => isPrivateAddress(a.address));
  if (bad) throw new WebhookTargetError(`webhook host ${host} resolves to a private address (${bad.address})`);
  return parsed;
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

/**
 * A `lookup` for http(s).request that refuses private addresses at connect
 * time, so a DNS answer that changed since `assertWebhookTarget` (rebinding)
 * cannot reach inside. Handles both the single and the `all` form Node uses.
 * With a resolver that shares answers (webhook-host-cache.ts), the connect
 * uses the answer the check saw, checked again here.
 */
export function guardedLookup(allowPrivate: boolean, resolveAll?: ResolveAll, signal?: AbortSignal) {
  return (hostname: string, options: { all?: boolean; family?: number | string }, callback: LookupCallback): void => {
    const resolved = (then: (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void): void => {
      if (!resolveAll) return dnsLookup(hostname, { ...options, all: true, verbatim: true } as { all: true }, then);
      resolveAll(hostname, signal).then((list) => then(null, list), (err: NodeJS.ErrnoException) => then(err, []));
    };
    resolved((err, addresses) => {
      if (err) return callback(err, '');
      const list = addresses;
      if (!allowPrivate) {
        const bad = list.find((a) => isPrivateAddress(a.address));
        if (bad) return callback(new WebhookTargetError(`webhook host ${hostname} resolves to a private address (${bad.address})`), '');
      }
      if (options.all) return callback(null, list);
      const first = list[0];
      if (!first) return callback(Object.assign(new Error(`cannot resolve ${hostname}`), { code: 'ENOTFOUND' }), '');
      callback(null, first.address, first.family);
    });
  };
}
