import { randomBytes } from 'node:crypto';
import { Cluster, Redis } from 'ioredis';
import { pino, type Logger } from 'pino';
import { AccountStore, type CreatedAccount } from '../../src/accounts/account-store.js';
import { loadConfig, type DeepPartial } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { Sealer } from '../../src/crypto/sealer.js';
import { startEngine, type Engine, type Role } from '../../src/main.js';
import { Keys } from '../../src/store/keys.js';
import { connectRedis } from '../../src/store/redis.js';

export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

/** A config for one test: its own Redis prefix, loopback only, ephemeral ports, fast SIP timers. */
export function testConfig(overrides: DeepPartial<Config> = {}): Readonly<Config> {
  const prefix = `fvtest-${randomBytes(4).toString('hex')}`;
  const base: DeepPartial<Config> = {
    redis: { url: REDIS_URL, prefix },
    http: { host: '127.0.0.1', port: 0 },
    security: { masterKey: randomBytes(32).toString('hex') },
    log: { level: 'silent' },
    sip: { listen: { host: '127.0.0.1', port: 0 } },
    // No worker-role operator listener unless a test asks for one (a fixed port would collide).
    metrics: { host: '127.0.0.1', port: 0 },
    // No SMPP binds unless a test brings a test SMSC (test/helpers/smsc.ts).
    sms: { enabled: false },
  };
  return loadConfig({ env: {}, overrides: merge(base, overrides) as DeepPartial<Config> });
}

function merge(a: unknown, b: unknown): unknown {
  if (typeof a !== 'object' || a === null || Array.isArray(a) || typeof b !== 'object' || b === null || Array.isArray(b)) {
    return b === undefined ? a : b;
  }
  const out: Record<string, unknown> = { ...(a as Record<string, unknown>) };
  for (const [k, v] of Object.entries(b)) out[k] = merge(out[k], v);
  return out;
}

export interface TestEngine {
  config: Readonly<Config>;
  engine: Engine;
  redis: Redis;
  keys: Keys;
  sealer: Sealer;
  accounts: AccountStore;
  url: string;
  /** Lines the engine logged (JSON objects), for assertions that secrets never appear. */
  logs: string[];
  /** Creates an active account with a balance and returns it with its secret and Basic auth header. */
  account(opts?: { balance?: number; active?: boolean; currency?: 'GBP' | 'USD' | 'EUR' }): Promise<CreatedAccount & { auth: string }>;
  stop(): Promise<void>;
}

export async function startTestEngine(config: Readonly<Config>, role: Role = 'all'): Promise<TestEngine> {
  const logs: string[] = [];
  const logger: Logger = pino(
    { level: process.env.TEST_LOG_LEVEL ?? 'debug' },
    { write: (line: string) => void logs.push(line) },
  );
  const engine = await startEngine(config, role, logger).catch(async (err: unknown) => {
    // A start that failed part-way may have written its start-up keys (key check, stream groups, queue meta) first.
    const cleanup = config.redis.cluster ? connectRedis(config.redis, pino({ level: 'silent' })) : new Redis(config.redis.url);
    await deletePrefix(cleanup, config.redis.prefix).finally(() => cleanup.quit());
    throw err;
  });
  // A Redis Cluster (redis.cluster) gets a cluster client; a single server the plain one.
  const redis = config.redis.cluster ? connectRedis(config.redis, pino({ level: 'silent' })) : new Redis(config.redis.url);
  const keys = new Keys(config.redis.prefix);
  const sealer = new Sealer(Buffer.from(config.security.masterKey, 'hex'));
  const accounts = new AccountStore(redis, keys, sealer);
  return {
    config,
    engine,
    redis,
    keys,
    sealer,
    accounts,
    logs,
    url: engine.httpUrl ?? '',
    async account(opts = {}) {
      const a = await accounts.create({
        name: 'test',
        balance: opts.balance ?? 10,
        currency: opts.currency ?? 'GBP',
        active: opts.active ?? true,
      });
      return { ...a, auth: 'Basic ' + Buffer.from(`${a.api_key}:${a.api_secret}`).toString('base64') };
    },
    async stop() {
      await engine.stop();
      await deletePrefix(redis, config.redis.prefix);
      await redis.quit();
    },
  };
}

/** Removes every key of a test's prefix (on every master of a cluster). */
export async function deletePrefix(redis: Redis, prefix: string): Promise<void> {
  if ((redis as unknown) instanceof Cluster) {
    for (const node of (redis as unknown as Cluster).nodes('master')) await deletePrefix(node, prefix);
    return;
  }
  let cursor = '0';
  do {
    const [next, found] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (found.length) await redis.unlink(...found);
  } while (cursor !== '0');
}

/** fetch with JSON in and out. */
export async function http(
  url: string,
  opts: { method?: string; auth?: string; body?: unknown; headers?: Record<string, string> } = {},
): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }> {
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  if (opts.auth) headers.authorization = opts.auth;
  let body: string | undefined;
  if (opts.body !== undefined) {
    body = typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
    headers['content-type'] ??= 'application/json';
  }
  const res = await fetch(url, { method: opts.method ?? (body ? 'POST' : 'GET'), headers, body });
  const text = await res.text();
  let parsed: Record<string, unknown> = {};
  try {
    parsed = JSON.parse(text) as Record<string, unknown>;
  } catch {
    parsed = { raw: text };
  }
  return { status: res.status, body: parsed, headers: res.headers };
}

/** Polls until `fn` returns a truthy value or the time is up. */
export async function waitFor<T>(fn: () => Promise<T | undefined | null | false>, timeoutMs = 10_000, stepMs = 50): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

/** Reads the events stream of a test prefix, oldest first. */
export async function readEvents(redis: Redis, keys: Keys): Promise<Record<string, string>[]> {
  const entries = await redis.xrange(keys.events(), '-', '+');
  return entries.map(([, flat]) => {
    const o: Record<string, string> = {};
    for (let i = 0; i + 1 < flat.length; i += 2) o[flat[i]!] = flat[i + 1]!;
    return o;
  });
}
