/**
 * RFC 3263 server location for trunk host names, embedded stack only (drachtio-server does its own).
 *
 * A trunk URI whose host is a name and that names no port (RFC 3263 4.2: an explicit port or an IP address means
 * A/AAAA only) is looked up in DNS. The transport (RFC 3263 4.1):
 *  - the URI's `transport` parameter fixes it: SRV `_sip._udp.` / `_sip._tcp.` / `_sips._tcp.` + host at once
 *    (trunk-transport.ts);
 *  - no parameter: NAPTR of the host first (`sip.dns.naptr`, default on). Its records with flag `s` and a service
 *    this client takes, in order then preference, name the transport and the SRV name to ask (the replacement):
 *    `SIP+D2U` (UDP) and `SIP+D2T` (TCP) for a `sip:` URI, `SIPS+D2T` (TLS) for a `sips:` one. A `sip:` trunk is never
 *    moved to TLS by DNS (its certificate settings come with a `sips:` / `;transport=tls` URI), and SCTP and
 *    WebSocket are not spoken here, so their records are passed over (RFC 3263 4.1: a client discards the records
 *    it does not support). A record whose SRV name has no record gives way to the next. No NAPTR record: SRV of
 *    each transport, in this client's order of preference (UDP, then TCP; TLS for `sips:`), the first that has
 *    records is used (RFC 3263 4.1: "a particular transport is supported if the query is successful").
 * Targets are ordered by priority, then weighted random within a priority (RFC 2782), per request, so that calls
 * share the load by weight.
 *
 * A request goes to the first target not marked failed; when it fails there (RFC 3263 4.3: transport error, no
 * response at all, 503), the same request goes to the next target (srv-failover.ts walks `SrvTargets`), and the
 * target is marked failed for `failedTargetMs` (a 503's Retry-After instead, RFC 3261 21.5.4), so that the following
 * requests try it last. Each target is tried once per request, the marked ones after the others.
 * No SRV record (NXDOMAIN, no data): the host itself on the default port and transport of its URI (UDP 5060 for
 * `sip:`, TLS 5061 for `sips:`).
 *
 * Answers are kept `cacheMs`: Node's resolveSrv and resolveNaptr do not return the record TTLs. Failures other than
 * "no such record" (timeout, refused, SERVFAIL) are not kept: the call fails `unreachable` and the next call asks
 * again.
 *
 * Addresses of the SRV targets (and of the fallback host): with `servers` configured, A then AAAA from those servers
 * (the names may exist only there), looked up as a request gets to each target; without, the name is left to the
 * transports' system lookup (getaddrinfo, as for every trunk before: /etc/hosts included, which c-ares would skip).
 * TLS verifies the certificate against the trunk's host name, not the SRV target (RFC 5922 4.1), so a located
 * destination carries that name as `serverName`.
 */
import { Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import { destinationKey, type Destination, type TransportProtocol } from './transport.js';
import { srvService, type TrunkTransport } from './trunk-transport.js';
import { errorMessage } from './util.js';

export interface SipDnsOptions {
  /** `ip`, `ip:port` or `[ipv6]:port`; none: the system's resolv.conf (c-ares). */
  servers?: readonly string[] | undefined;
  /** How long an SRV (or address) answer is kept. */
  cacheMs: number;
  /** One query gets this long per server before it fails (c-ares timeout, one try). */
  timeoutMs: number;
  /** A target a request failed at is tried last by the following requests this long; 0: never. Default 30 s. */
  failedTargetMs?: number | undefined;
  /**
   * With another target left, a request that has heard nothing at all from its target this long moves on to the
   * next (srv-failover.ts); 0: only Timer B/F, a transport error or a 503 move it. Default: defaultTargetTimeoutMs.
   */
  targetTimeoutMs?: number | undefined;
  /** RFC 3263 4.1 NAPTR for a trunk URI without a transport parameter (then SRV of each transport); false: SRV of the URI's own transport only. Default true. */
  naptr?: boolean | undefined;
}

export const DEFAULT_FAILED_TARGET_MS = 30_000;
/** `sip.dns.targetTimeoutMs` unless set: 8 × T1, four UDP sends of a request (4 s with the default T1 of 500 ms). */
export function defaultTargetTimeoutMs(t1Ms: number): number {
  return 8 * t1Ms;
}

export interface SrvTarget {
  readonly name: string;
  readonly port: number;
  readonly priority: number;
  readonly weight: number;
}

/** A lookup failed for another reason than "no such record": the call fails `unreachable`. */
export class SipDnsError extends Error {
  readonly code = 'sip_dns_failed';
  constructor(
    readonly query: string,
    readonly reason: string,
  ) {
    super(`DNS lookup of ${query} failed: ${reason}`);
  }
}

/** c-ares codes for an answer that says the record does not exist (RFC 3263 4.2: then use the host's A/AAAA). */
const NO_RECORD = new Set(['ENOTFOUND', 'ENODATA']);

/** `ask`'s answer; undefined when DNS says no such record exists; any other failure a SipDnsError naming `query`. */
async function answer<T>(query: string, ask: () => Promise<T>): Promise<T | undefined> {
  try {
    return await ask();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? '';
    if (NO_RECORD.has(code)) return undefined;
    throw new SipDnsError(query, code || errorMessage(err));
  }
}

interface Cached<T> {
  readonly until: number;
  readonly value: Promise<T>;
}

/** RFC 2782 order: ascending priority; within one, weighted random (weight-0 records first in the running sum). */
export function orderSrv(records: readonly SrvTarget[], random: () => number = Math.random): SrvTarget[] {
  const byPriority = new Map<number, SrvTarget[]>();
  for (const r of records) {
    const list = byPriority.get(r.priority) ?? [];
    list.push(r);
    byPriority.set(r.priority, list);
  }
  const out: SrvTarget[] = [];
  for (const priority of [...byPriority.keys()].sort((a, b) => a - b)) {
    const left = [...(byPriority.get(priority) ?? [])].sort((a, b) => a.weight - b.weight);
    while (left.length > 0) {
      const total = left.reduce((sum, r) => sum + r.weight, 0);
      const pick = random() * (total + 1);
      let running = 0;
      let index = left.findIndex((r) => (running += r.weight) >= pick);
      if (index < 0) index = left.length - 1;
      out.push(...left.splice(index, 1));
    }
  }
  return out;
}

/** A NAPTR record as Node's resolveNaptr gives it. */
export interface NaptrRecord {
  readonly flags: string;
  readonly service: string;
  readonly regexp: string;
  readonly replacement: string;
  readonly order: number;
  readonly preference: number;
}

/** One way to reach a trunk: this transport, its targets under this SRV name. */
export interface SrvCandidate {
  readonly protocol: TransportProtocol;
  readonly srvName: string;
}

/** NAPTR services this client takes (RFC 3263 4.1, IANA's SIP table), by URI scheme. */
const NAPTR_SERVICES: Record<'sip' | 'sips', Record<string, TransportProtocol>> = {
  sip: { 'SIP+D2U': 'udp', 'SIP+D2T': 'tcp' },
  sips: { 'SIPS+D2T': 'tls' },
};

/**
 * The candidates NAPTR records give for a URI of `scheme` (RFC 3263 4.1, RFC 3403): only flag `s` (the replacement is
 * an SRV name) with a service this client takes for the scheme, ascending order, then preference; a replacement of
 * "." (none) or a record that rewrites by regexp is passed over. Empty: use srvCandidates.
 */
export function naptrCandidates(records: readonly NaptrRecord[], scheme: 'sip' | 'sips'): SrvCandidate[] {
  const services = NAPTR_SERVICES[scheme];
  return records
    .filter((r) => r.flags.toLowerCase() === 's' && r.regexp === '' && r.replacement !== '' && r.replacement !== '.' && services[r.service.toUpperCase()] !== undefined)
    .sort((a, b) => a.order - b.order || a.preference - b.preference)
    .map((r) => ({ protocol: services[r.service.toUpperCase()]!, srvName: r.replacement.replace(/\.$/, '') }));
}

/** Without NAPTR records (RFC 3263 4.1): SRV of each transport this client takes for the scheme, in its order of preference. */
export function srvCandidates(host: string, scheme: 'sip' | 'sips'): SrvCandidate[] {
  const transports: TrunkTransport[] = scheme === 'sips' ? ['tls'] : ['udp', 'tcp'];
  return transports.map((protocol) => ({ protocol, srvName: `${srvService(protocol)}.${host}` }));
}

/** Where a request goes first, and, for a trunk located by DNS SRV, the targets left after it. */
export interface Located {
  readonly destination: Destination;
  /** None for a trunk with an address or a port, or without SRV record: there is nowhere else to go. */
  readonly rest?: SrvTargets | undefined;
}

/**
 * The SRV targets of one request in the order RFC 3263 4.3 tries them: RFC 2782 order, the targets marked failed
 * after the others, each address once. Each target's address is looked up when the request gets to it; a target
 * without one is passed over (logged by the locator).
 */
export class SrvTargets {
  private index = 0;
  private readonly marked: Destination[] = [];
  private readonly seen = new Set<string>();

  constructor(
    private readonly order: readonly SrvTarget[],
    private readonly destinationOf: (target: SrvTarget) => Promise<Destination | undefined>,
    private readonly isMarked: (destination: Destination) => boolean,
  ) {}

  /** Is a target left? (Its address is not looked up yet: it may turn out to have none.) */
  get more(): boolean {
    return this.index < this.order.length || this.marked.length > 0;
  }

  /** The next destination, undefined once every target was handed out; a DNS failure passes its target over. */
  async next(): Promise<Destination | undefined> {
    for (let target = this.order[this.index]; target !== undefined; target = this.order[this.index]) {
      this.index++;
      const destination = await this.destinationOf(target);
      if (destination === undefined) continue;
      const key = destinationKey(destination);
      if (this.seen.has(key)) continue;
      this.seen.add(key);
      if (!this.isMarked(destination)) return destination;
      this.marked.push(destination);
    }
    return this.marked.shift();
  }
}

export class SipLocator {
  private readonly resolver: Resolver;
  private readonly options: SipDnsOptions;
  private readonly logger: Logger;
  private readonly now: () => number;
  private readonly failedTargetMs: number;
  private readonly srvCache = new Map<string, Cached<SrvTarget[]>>();
  private readonly naptrCache = new Map<string, Cached<NaptrRecord[]>>();
  private readonly addressCache = new Map<string, Cached<string>>();
  /** Destination keys marked failed, until when. */
  private readonly failedUntil = new Map<string, number>();

  constructor(options: SipDnsOptions, logger: Logger, now: () => number = Date.now) {
    this.options = options;
    this.logger = logger;
    this.now = now;
    this.failedTargetMs = options.failedTargetMs ?? DEFAULT_FAILED_TARGET_MS;
    this.resolver = new Resolver({ timeout: options.timeoutMs, tries: 1 });
    if (options.servers !== undefined && options.servers.length > 0) this.resolver.setServers([...options.servers]);
  }

  /**
   * Where a request to this trunk goes first, and the SRV targets left after it. `base` is the trunk's destination
   * as its URI reads (the default port when none); `srvName` what to ask (srvNameFor), undefined when nothing;
   * `naptr`: the URI names no transport, so NAPTR of its host decides it (RFC 3263 4.1), unless `naptr: false`.
   * Throws SipDnsError when DNS fails, or when no target has an address.
   */
  async locate(base: Destination, srvName: string | undefined, naptr?: { scheme: 'sip' | 'sips' }): Promise<Located> {
    if (srvName === undefined) return { destination: base };
    let protocol = base.protocol;
    let records: SrvTarget[];
    if (naptr !== undefined && this.options.naptr !== false) {
      ({ protocol, srvName, records } = await this.chooseTransport(base.host, naptr.scheme, base.protocol, srvName));
    } else {
      records = await this.srv(srvName);
    }
    const serverName = base.host;
    // Another transport than the URI's default (UDP → TCP; never to or from TLS): no TLS settings to carry.
    if (protocol !== base.protocol) base = { protocol, host: base.host, port: base.port };
    if (records.length === 0) {
      const host = await this.address(base.host);
      if (host === undefined) throw new SipDnsError(base.host, 'no SRV, A or AAAA record');
      return { destination: { ...base, host, serverName } };
    }
    let lastError: unknown;
    const rest = new SrvTargets(
      orderSrv(records),
      async (target) => {
        let host: string | undefined;
        let why: unknown;
        try {
          host = await this.address(target.name);
        } catch (err) {
          why = err;
        }
        // The trunk's own TLS settings (base.tls) go with every target.
        if (host !== undefined) return { ...base, host, port: target.port, serverName };
        lastError = why ?? new SipDnsError(target.name, 'no A or AAAA record');
        this.logger.warn({ srv: srvName, target: `${target.name}:${target.port}`, err: errorMessage(lastError) }, 'SIP SRV target has no address; next target');
        return undefined;
      },
      (destination) => (this.failedUntil.get(destinationKey(destination)) ?? 0) > this.now(),
    );
    const destination = await rest.next();
    if (destination === undefined) throw lastError instanceof SipDnsError ? lastError : new SipDnsError(srvName, errorMessage(lastError));
    return { destination, rest };
  }

  /**
   * RFC 3263 4.1 for a URI without a transport: the NAPTR candidates, else SRV of each transport; the first with SRV
   * records wins. None: the URI's own transport and SRV name, with no records (the host on its default port).
   */
  private async chooseTransport(
    host: string,
    scheme: 'sip' | 'sips',
    uriProtocol: TransportProtocol,
    uriSrvName: string,
  ): Promise<{ protocol: TransportProtocol; srvName: string; records: SrvTarget[] }> {
    const fromNaptr = naptrCandidates(await this.naptr(host), scheme);
    for (const candidate of fromNaptr.length > 0 ? fromNaptr : srvCandidates(host, scheme)) {
      const records = await this.srv(candidate.srvName);
      if (records.length > 0) return { ...candidate, records };
    }
    return { protocol: uriProtocol, srvName: uriSrvName, records: [] };
  }

  private naptr(host: string): Promise<NaptrRecord[]> {
    return this.cached(this.naptrCache, host, async () => {
      const records = await answer(`NAPTR ${host}`, () => this.resolver.resolveNaptr(host));
      if (records === undefined) return [];
      this.logger.info(
        { naptr: host, records: records.map((r) => `${r.order} ${r.preference} "${r.flags}" "${r.service}" ${r.replacement || `"${r.regexp}"`}`) },
        'SIP NAPTR records loaded',
      );
      return records;
    });
  }

  /**
   * A request failed at `destination` (transport error, no response, 503): the following requests try it last, for
   * `forMs` (a 503's Retry-After) or `failedTargetMs`.
   */
  failed(destination: Destination, forMs: number = this.failedTargetMs): void {
    if (!this.knows(destination) || forMs <= 0) return;
    const key = destinationKey(destination);
    const now = this.now();
    const marked = (this.failedUntil.get(key) ?? 0) > now;
    for (const [k, until] of this.failedUntil) if (until <= now) this.failedUntil.delete(k);
    this.failedUntil.set(key, Math.max(this.failedUntil.get(key) ?? 0, now + forMs));
    // Once per marking: a dead target fails every call waiting on it at once.
    if (!marked) this.logger.warn({ destination: key, for_ms: forMs }, 'SIP SRV target failed; the next calls try the next target');
  }

  /** Only destinations this locator handed out are marked (a trunk with an address or a port is never skipped). */
  private knows(destination: Destination): boolean {
    return destination.serverName !== undefined;
  }

  private srv(name: string): Promise<SrvTarget[]> {
    return this.cached(this.srvCache, name, async () => {
      const records = await answer(name, () => this.resolver.resolveSrv(name));
      if (records === undefined) {
        // Then the next transport's name (RFC 3263 4.1), or the host on its URI's default port and transport.
        this.logger.info({ srv: name }, 'no SIP SRV record under this name');
        return [];
      }
      // RFC 2782: a single record with target "." says the service is not offered here.
      // A port of 0 is no port: such a record is left out as malformed.
      const usable = records.filter((r) => r.name !== '' && r.name !== '.' && r.port > 0);
      this.logger.info({ srv: name, targets: usable.map((r) => `${r.name}:${r.port} p${r.priority} w${r.weight}`) }, 'SIP SRV records loaded');
      return usable;
    });
  }

  /**
   * A then AAAA from the configured servers (undefined: neither exists, kept like an answer); without servers, the
   * name itself (the transports look it up).
   */
  private address(host: string): Promise<string | undefined> {
    if (isIP(host) !== 0 || this.options.servers === undefined || this.options.servers.length === 0) return Promise.resolve(host);
    return this.cached(this.addressCache, host, async () => {
      for (const family of ['resolve4', 'resolve6'] as const) {
        const [address] = (await answer(host, () => this.resolver[family](host))) ?? [];
        if (address !== undefined) return address;
      }
      return undefined;
    });
  }

  /** One lookup in flight per name; answers kept `cacheMs`, failures not kept. */
  private cached<T>(cache: Map<string, Cached<T>>, key: string, lookup: () => Promise<T>): Promise<T> {
    const hit = cache.get(key);
    if (hit !== undefined && hit.until > this.now()) return hit.value;
    const value = lookup();
    const entry = { until: this.now() + this.options.cacheMs, value };
    cache.set(key, entry);
    value.catch(() => {
      if (cache.get(key) === entry) cache.delete(key);
    });
    return value;
  }
}

/**
 * The SRV name for a trunk host, or undefined when RFC 3263 4.2 asks for none: an explicit port, an IP address.
 * RFC 6761 6.3: `localhost` never goes to DNS.
 */
export function srvNameFor(transport: TrunkTransport, host: string, explicitPort: boolean): string | undefined {
  if (explicitPort || isIP(host) !== 0) return undefined;
  const h = host.toLowerCase().replace(/\.$/, '');
  if (h === 'localhost' || h.endsWith('.localhost')) return undefined;
  return `${srvService(transport)}.${host}`;
}
