/**
 * Taking a SIP trunk out of service by hand, and back (a carrier's maintenance window, an incident on its side):
 * `flashverify trunk disable NAME`, `POST /admin/v1/trunks/{name}/disable`. The state lives in Redis (one hash,
 * Keys.trunksDisabled), so every worker process follows it: each reads it every `pollMs` (one HGETALL) and its
 * TrunkPacer gives a disabled trunk no new call (as if it routed nothing); calls on it already go on to their end.
 * Route advance and every other choice skip it too. A number only disabled trunks route fails `no_route` (refunded).
 */
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { TrunkConfig } from '../config/schema.js';
import { AppError } from '../errors/app-error.js';
import type { Keys } from '../store/keys.js';
import { oncePer } from './cluster-limits.js';

export class TrunkNotFoundError extends AppError {
  constructor(name: string, known: readonly string[]) {
    super('trunk_not_found', `no SIP trunk named "${name}" (sip.trunks[].name: ${known.join(', ')})`);
  }
}

export interface TrunkAdminState {
  name: string;
  /** Takes new calls (unless its health has it down). */
  enabled: boolean;
  /** Disabled: when (ISO 8601) and why (the operator's words, if any). */
  disabled_at?: string;
  reason?: string;
  /** Its `cps` and `maxCalls` as configured, and (with `maxCalls` under sip.trunkLimits cluster) the channels in use over every worker. */
  cps?: number;
  max_calls?: number;
  calls_in_use?: number;
}

interface Stored {
  at: number;
  reason?: string;
}

/** The operators' side: list, disable, enable (the CLI and the admin API). */
export class TrunkAdmin {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly trunks: readonly TrunkConfig[],
    /** sip.trunkLimits is cluster: the channels in use are counted in Redis (list() reads them). */
    private readonly clusterLimits = true,
  ) {}

  /** Every configured trunk, with its state, its limits and (capped, cluster limits) the channels in use. */
  async list(): Promise<TrunkAdminState[]> {
    const off = await readDisabled(this.redis, this.keys);
    return Promise.all(
      this.trunks.map(async (t) => {
        const inUse = t.maxCalls !== undefined && this.clusterLimits ? await channelsInUse(this.redis, this.keys, t.name) : undefined;
        return { ...stateOf(t.name, off.get(t.name)), cps: t.cps, ...(t.maxCalls !== undefined ? { max_calls: t.maxCalls } : {}), ...(inUse !== undefined ? { calls_in_use: inUse } : {}) };
      }),
    );
  }

  /** Takes `name` out of service (again: keeps the first time, updates the reason when one is given). */
  async disable(name: string, reason?: string): Promise<TrunkAdminState> {
    this.known(name);
    const clean = reason === undefined ? undefined : cleanReason(reason);
    const raw = await this.redis.hget(this.keys.trunksDisabled(), name);
    const previous = raw === null ? undefined : parseStored(raw);
    const stored: Stored = { at: previous?.at ?? Date.now(), ...(clean ? { reason: clean } : previous?.reason ? { reason: previous.reason } : {}) };
    await this.redis.hset(this.keys.trunksDisabled(), name, JSON.stringify(stored));
    return stateOf(name, stored);
  }

  /** Puts `name` back in service. */
  async enable(name: string): Promise<TrunkAdminState> {
    this.known(name);
    await this.redis.hdel(this.keys.trunksDisabled(), name);
    return stateOf(name, undefined);
  }

  private known(name: string): void {
    if (!this.trunks.some((t) => t.name === name)) throw new TrunkNotFoundError(name, this.trunks.map((t) => t.name));
  }
}

/**
 * A worker's side: reads the disabled trunks every `pollMs` and hands them to `apply` (TrunkPacer.setDisabled),
 * logging each change. Redis failing: the last state read stays (warn once a minute).
 */
export class TrunkAdminWatcher {
  private timer: NodeJS.Timeout | undefined;
  private current = new Map<string, Stored>();
  private readonly warnNow = oncePer(60_000);

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly trunks: readonly TrunkConfig[],
    private readonly apply: (disabled: ReadonlySet<string>) => void,
    private readonly logger: Logger,
    private readonly pollMs = 1000,
  ) {}

  /** Reads the state once now (a worker starts with it), then every pollMs. */
  async start(): Promise<void> {
    await this.poll();
    this.timer = setInterval(() => void this.poll(), this.pollMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private async poll(): Promise<void> {
    let next: Map<string, Stored>;
    try {
      next = await readDisabled(this.redis, this.keys);
    } catch (err) {
      if (this.warnNow()) {
        this.logger.warn({ err: (err as Error).message }, 'could not read the disabled trunks from Redis; keeping the last state read');
      }
      return;
    }
    const names = new Set(this.trunks.map((t) => t.name));
    for (const [name, s] of next) {
      if (names.has(name) && !this.current.has(name)) this.logger.warn({ trunk: name, reason: s.reason, since: s.at > 0 ? new Date(s.at).toISOString() : undefined }, 'trunk disabled by an operator: no new calls on it');
    }
    for (const name of this.current.keys()) {
      if (names.has(name) && !next.has(name)) this.logger.info({ trunk: name }, 'trunk enabled by an operator: back in service');
    }
    this.current = next;
    this.apply(new Set([...next.keys()].filter((n) => names.has(n))));
  }
}

async function readDisabled(redis: Redis, keys: Keys): Promise<Map<string, Stored>> {
  const raw = await redis.hgetall(keys.trunksDisabled());
  const out = new Map<string, Stored>();
  for (const [name, value] of Object.entries(raw)) out.set(name, parseStored(value));
  return out;
}

/** One field of the hash; written by hand (HSET ... 1, not JSON): disabled all the same, since unknown. */
function parseStored(value: string): Stored {
  try {
    const v = JSON.parse(value) as Partial<Stored> | null;
    return { at: typeof v?.at === 'number' ? v.at : 0, ...(typeof v?.reason === 'string' ? { reason: v.reason } : {}) };
  } catch {
    return { at: 0 };
  }
}

/** The trunk's channels held over every worker (takeSharedCount-3.lua's hash; lapsed workers may still be in it). */
async function channelsInUse(redis: Redis, keys: Keys, trunk: string): Promise<number> {
  return (await redis.hvals(keys.trunkChannels(trunk))).reduce((n, v) => n + Math.max(0, Number(v) || 0), 0);
}

function stateOf(name: string, s: Stored | undefined): TrunkAdminState {
  if (!s) return { name, enabled: true };
  return { name, enabled: false, ...(s.at > 0 ? { disabled_at: new Date(s.at).toISOString() } : {}), ...(s.reason ? { reason: s.reason } : {}) };
}

/** Logged and shown: printable, one line, bounded. */
function cleanReason(reason: string): string | undefined {
  const clean = reason.replace(/[^\x20-\x7e\u00a0-\uffff]/g, ' ').trim().slice(0, 200);
  return clean === '' ? undefined : clean;
}
