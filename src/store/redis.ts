import { setTimeout as sleep } from 'node:timers/promises';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { Logger } from 'pino';
import { AppError } from '../errors/app-error.js';

/** Where Redis is: `redis.url` and `redis.cluster` of the config (a bare URL = one server). */
export type RedisEndpoint = string | { readonly url: string; readonly cluster?: boolean };

/**
 * A Redis connection for flashverify's own commands. BullMQ makes its own
 * connections (it needs maxRetriesPerRequest: null for blocking commands).
 *
 * With `redis.cluster`, an ioredis Cluster client over the seed nodes in `redis.url`. It is typed as Redis: every
 * command flashverify sends names keys under `redis.prefix`, whose hash tag (required by the config) puts them in
 * one slot, so scripts, MULTI and pipelines go to one node as they would to a single server.
 */
export function connectRedis(endpoint: RedisEndpoint, logger: Logger, options: RedisOptions = {}): Redis {
  const { url, cluster } = typeof endpoint === 'string' ? { url: endpoint, cluster: false } : endpoint;
  const redis = cluster ? clusterClient(url, logger, options) : singleClient(url, options);
  logConnectionErrors(redis, logger);
  if (options.maxRetriesPerRequest === null) waitingConnections.set(redis, refusalLog(logger));
  return redis;
}

/**
 * Connections made to wait for Redis (maxRetriesPerRequest: null: the delivery writes), each with its log of
 * refusals. ioredis waits through a lost connection by itself; a script on such a connection also waits through a
 * refusal that passes (LuaScript.run), so that a call's outcome is not dropped because Redis was full for a while.
 */
const waitingConnections = new WeakMap<object, { refused(err: Error): void; accepted(): void }>();

/** The refusal log of a waiting connection; undefined for one whose commands fail at once. */
export function waitsThroughRefusals(redis: Redis): { refused(err: Error): void; accepted(): void } | undefined {
  return waitingConnections.get(redis);
}

/**
 * A write on a waiting connection (maxRetriesPerRequest: null: the delivery writes) that Redis refuses for a while
 * (isPassingRefusal: full, a replica, loading ...) is sent again after 100 ms, then twice as long each time up to 2 s,
 * until Redis takes it; a refused write applied nothing, so sending it again applies it once. On a connection that
 * fails fast (the api's), the refusal is thrown at once (a 503). `write` must be safe to send again: one command, or
 * a script refused before its first write (LuaScript.run).
 */
export async function untilTaken<T>(redis: Redis, write: () => Promise<T>): Promise<T> {
  const waiting = waitsThroughRefusals(redis);
  for (let pause = 100; ; pause = Math.min(2000, pause * 2)) {
    try {
      const result = await write();
      if (waiting && pause > 100) waiting.accepted();
      return result;
    } catch (err) {
      if (!waiting || !(err instanceof Error) || !isPassingRefusal(err)) throw err;
      waiting.refused(err);
      await sleep(pause);
    }
  }
}

/**
 * The readiness probe of Redis: a write with a short TTL, so that a Redis that answers PING but refuses every write
 * (full under noeviction, a replica after a failover, loading) is not ready either.
 */
export async function redisTakesWrites(redis: Redis, key: string): Promise<boolean> {
  return (await redis.set(key, '1', 'PX', 5000)) === 'OK';
}

/** One warning per distinct refusal while they last, and one line when writes are taken again. */
function refusalLog(logger: Logger): { refused(err: Error): void; accepted(): void } {
  let last = '';
  return {
    refused(err) {
      const kind = err.message.split(' ')[0]!;
      if (kind !== last) logger.warn({ err: err.message }, 'redis refuses writes for now; delivery writes wait and retry');
      last = kind;
    },
    accepted() {
      if (last) logger.info('redis takes writes again');
      last = '';
    },
  };
}

/**
 * A refusal Redis makes before a script has written anything, and that passes: full (maxmemory under noeviction:
 * a script without flags is refused at its first write only, so nothing of it was applied), a replica after a
 * failover (READONLY), loading its data, another script running too long (BUSY), no quorum of replicas.
 */
export function isPassingRefusal(err: Error): boolean {
  return /^(OOM|READONLY|MASTERDOWN|LOADING|BUSY|TRYAGAIN|NOREPLICAS) /.test(err.message);
}

/** One warning per distinct error while Redis is unreachable (not one per reconnection attempt), and one when it is back. */
function logConnectionErrors(redis: Redis, logger: Logger): void {
  let lastError = '';
  redis.on('error', (err: Error) => {
    if (err.message !== lastError) logger.warn({ err: err.message }, 'redis connection error');
    lastError = err.message;
  });
  redis.on('ready', () => {
    if (lastError) logger.info('redis connection restored');
    lastError = '';
  });
}

/**
 * BullMQ's connection: blocking commands, so no per-command retry limit (BullMQ insists on maxRetriesPerRequest:
 * null), and no auto-pipelining (BullMQ's own choice of round trips is kept).
 */
export function connectBullRedis(endpoint: RedisEndpoint, logger?: Logger): Redis {
  const { url, cluster } = typeof endpoint === 'string' ? { url: endpoint, cluster: false } : endpoint;
  const redis = cluster
    ? (new Cluster(seedNodes(url), { redisOptions: { ...nodeOptions(url), maxRetriesPerRequest: null } }) as unknown as Redis)
    : redisClient(url, { maxRetriesPerRequest: null, reconnectOnError: reconnectOnReadonly });
  if (logger) logConnectionErrors(redis, logger);
  return redis;
}

/**
 * For a BullMQ Queue's 'error' event. A Queue only re-emits its connection's errors, and the connection logs those
 * itself, once per distinct error (connectBullRedis). Without a listener BullMQ prints every one of them to stderr,
 * tens per second while Redis is unreachable.
 */
export const connectionErrorLoggedElsewhere = (): void => undefined;

/**
 * Whether a command failed because Redis (or the cluster) could not be reached, as opposed to a bug or bad data:
 * the API's 503 service_unavailable.
 */
export function isRedisUnavailable(err: Error): boolean {
  return (
    err.name === 'MaxRetriesPerRequestError' ||
    err instanceof RedisNotAnswering ||
    // Reachable but refusing for now (full, a replica, loading ...).
    isPassingRefusal(err) ||
    err.name === 'ClusterAllFailedError' ||
    /Connection is closed|ECONNREFUSED|Stream isn't writeable|Cluster isn't ready|CLUSTERDOWN|Too many Cluster redirections|Failed to refresh slots cache/.test(err.message)
  );
}

/** `redis.url` for a message: passwords (in the URL's user part, or a unix:// URL's `password=`) replaced by `***`. */
export function redactRedisUrl(url: string): string {
  // One URL, its Sentinels listed with commas.
  if (url.trim().startsWith('sentinel://')) return url.trim().replace(/\/\/([^:/@]*):[^@/]*@/, '//$1:***@').replace(/([?&]sentinelPassword=)[^&]*/, '$1***');
  return url
    .split(',')
    .map((u) => {
      const t = u.trim();
      if (t.startsWith('unix://')) return t.replace(/([?&]password=)[^&]*/, '$1***');
      try {
        const parsed = new URL(t);
        if (parsed.password) parsed.password = '***';
        return parsed.toString();
      } catch {
        return t.replace(/\/\/([^:/@]*):[^@/]*@/, '//$1:***@');
      }
    })
    .join(',');
}

/** Redis answers no PING (RedisStallWatch): the api sends it nothing and answers 503. */
export class RedisNotAnswering extends Error {
  constructor() {
    super('Redis is not answering (redis.stallAfterMs)');
    this.name = 'RedisNotAnswering';
  }
}

/** Redis did not answer at start-up, or answered PING with an error (a password it refused, ...). */
export class RedisUnreachableError extends AppError {
  constructor(message: string) {
    super('redis_unreachable', message);
  }
}

/** A stop signal came while the start waited for Redis: nothing was started, nothing to stop. */
export class StartAborted extends AppError {
  constructor(message: string) {
    super('start_aborted', message);
  }
}

/**
 * At start-up, before anything else touches Redis: waits until Redis answers PING, for at most `waitMs`
 * (`redis.startupWaitMs`: a Redis started beside the engine may come up a moment later), retrying every 500 ms.
 * Then, or at once for an error Redis itself answered (NOAUTH, WRONGPASS, LOADING left aside), a RedisUnreachableError
 * that names the URL (password hidden) and the last connection error, instead of ioredis's "max retries per request".
 * `abort` (a stop signal during the start) ends the wait at once with StartAborted.
 */
export async function waitForRedis(redis: Redis, url: string, waitMs: number, abort?: AbortSignal): Promise<void> {
  const started = Date.now();
  const aborted = (): StartAborted => new StartAborted(`stopped while waiting for Redis at ${redactRedisUrl(url)}`);
  /** The client's own last connection error (refused, no Sentinel answering ...): the best reason to give, else PING's. */
  let connectionError = '';
  const onError = (err: Error): void => void (connectionError = err.message);
  // A single server's client emits 'error'; a cluster client 'node error' for each seed node it could not reach.
  redis.on('error', onError);
  redis.on('node error', onError);
  let onAbort: (() => void) | undefined;
  const stopped = new Promise<never>((_, reject) => {
    onAbort = () => reject(aborted());
    if (abort?.aborted) onAbort();
    else abort?.addEventListener('abort', onAbort, { once: true });
  });
  // Rejected at a stop that comes while nothing races it (during the pause between tries): handled there.
  stopped.catch(() => undefined);
  try {
    for (;;) {
      const left = waitMs - (Date.now() - started);
      // A server that takes the connection and never answers (another service on the port, a proxy with nothing
      // behind it) would hold PING for ever: each try is bounded, at least a second.
      const tryMs = Math.max(1000, left);
      let timer: NodeJS.Timeout | undefined;
      try {
        const silent = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(Object.assign(new Error(`no answer to PING within ${(tryMs / 1000).toFixed(1)} s`), { silent: true })), tryMs);
        });
        await Promise.race([redis.ping(), silent, stopped]);
        return;
      } catch (err) {
        if (!(err instanceof Error) || err instanceof StartAborted) throw err;
        const isSilent = 'silent' in err;
        // Unreachable, or refusing for now (LOADING included): try again; any other answer is final.
        if (!isSilent && !isRedisUnavailable(err)) {
          throw new RedisUnreachableError(`Redis at ${redactRedisUrl(url)} answered PING with an error: ${err.message} (redis.url, REDIS_URL)`);
        }
        // A server that answers (LOADING ...) says more than the connection's last error.
        const cause = isPassingRefusal(err) ? err.message : connectionError || err.message;
        const leftNow = waitMs - (Date.now() - started);
        if (leftNow <= 0) {
          const waited = waitMs > 0 ? ` within ${waitMs / 1000} s (redis.startupWaitMs)` : '';
          throw new RedisUnreachableError(`cannot reach Redis at ${redactRedisUrl(url)}${waited}: ${cause}. Is redis-server running there? Set redis.url or REDIS_URL`);
        }
        await sleep(Math.min(500, leftNow), undefined, { signal: abort }).catch(() => {
          throw aborted();
        });
      } finally {
        clearTimeout(timer);
      }
    }
  } finally {
    redis.off('error', onError);
    redis.off('node error', onError);
    if (onAbort) abort?.removeEventListener('abort', onAbort);
  }
}

function clusterClient(url: string, logger: Logger, options: RedisOptions): Redis {
  const { maxRetriesPerRequest = 1, ...rest } = options;
  const cluster = new Cluster(seedNodes(url), {
    // As singleClient: fail a command after about a second while the cluster is unreachable, unless the caller
    // waits for Redis to return (maxRetriesPerRequest: null, the delivery writes).
    clusterRetryStrategy: (times) => Math.min(times * 100, 500),
    enableOfflineQueue: true,
    enableAutoPipelining: true,
    // A MOVED/ASK after a failover is followed; a node that is down is retried for at most this long.
    retryDelayOnFailover: 200,
    redisOptions: { ...nodeOptions(url), ...rest, maxRetriesPerRequest },
  });
  if (maxRetriesPerRequest !== null) {
    // Until the cluster is first reached, commands wait for it (start-up). After that, a command sent while it is
    // unreachable fails at once (the API's 503) instead of waiting in the client's queue, which has no bound.
    cluster.once('ready', () => {
      cluster.options.enableOfflineQueue = false;
    });
  }
  cluster.on('node error', (err: Error, node: string) => logger.warn({ err: err.message, node }, 'redis cluster node error'));
  return cluster as unknown as Redis;
}

/**
 * A server that answers READONLY has become a replica: the address in `redis.url` (a virtual IP, a DNS name such as
 * a managed Redis's primary endpoint) now leads to the new primary, but this connection is still open to the old
 * one and would be refused for ever. Reconnect, and send the refused command again (Redis refuses it before it
 * writes anything).
 */
export function reconnectOnReadonly(err: Error): 2 | false {
  return err.message.startsWith('READONLY') ? 2 : false;
}

function singleClient(url: string, options: RedisOptions): Redis {
  return redisClient(url, {
    reconnectOnError: reconnectOnReadonly,
    // Fail commands quickly while Redis is down instead of queueing forever,
    // so the API answers 503 within about a second rather than hanging: a
    // command waits for at most one failed reconnection attempt, and attempts
    // are at most 500 ms apart. Workers' delivery writes use a connection with
    // maxRetriesPerRequest: null instead (they wait for Redis to return).
    maxRetriesPerRequest: 1,
    enableOfflineQueue: true,
    retryStrategy: (times) => Math.min(times * 100, 500),
    lazyConnect: false,
    // Commands issued in the same event-loop turn (concurrent requests and calls)
    // go out in one socket write: at load, write syscalls were the largest single
    // cost of the api and worker processes (BENCHMARKS.md, "Where the time goes").
    // Order per connection is unchanged.
    enableAutoPipelining: true,
    ...options,
  });
}

/** The cluster's seed nodes: `redis.url` split at commas (one node is enough; the client discovers the others). */
function seedNodes(url: string): { host: string; port: number }[] {
  return url.split(',').map((u) => {
    const parsed = new URL(u.trim());
    return { host: parsed.hostname, port: Number(parsed.port || 6379) };
  });
}

/** What every node connection shares, from the first seed URL: password, user, TLS (rediss://). */
function nodeOptions(url: string): RedisOptions {
  const first = new URL(url.split(',')[0]!.trim());
  return {
    ...(first.username ? { username: decodeURIComponent(first.username) } : {}),
    ...(first.password ? { password: decodeURIComponent(first.password) } : {}),
    ...(first.protocol === 'rediss:' ? { tls: {} } : {}),
  };
}

/**
 * What ioredis is given for `redis.url`: redis:// and rediss:// URLs as they
 * are; `unix:///run/redis/redis.sock[?db=N&password=P]` as the socket path
 * with its query (ioredis reads a string that starts with "/" as a Unix socket
 * path), for a Redis on the same host. Its writes skip the TCP stack; on the
 * benchmark machine that made no measurable difference to the engine's CPU
 * (BENCHMARKS.md, "Measured and not kept").
 */
export function redisTarget(url: string): string {
  if (url.startsWith('sentinel://')) throw new Error(`redis.url ${redactRedisUrl(url)} names Sentinels, not one server: use redisClient()`);
  if (!url.startsWith('unix://')) return url;
  const path = url.slice('unix://'.length);
  if (!path.startsWith('/')) throw new Error(`redis.url ${url}: a unix:// URL needs an absolute socket path (unix:///path/to/redis.sock)`);
  return path;
}

/**
 * `sentinel://[user:password@]host:port[,host:port...]/<master name>[/<db>][?sentinelPassword=P]`: Redis Sentinel.
 * The client asks the Sentinels which server is the master of that name, connects to it, and after a failover
 * (Sentinel's +switch-master, or the old master's READONLY) to the new one. The password is the data servers'.
 */
export function sentinelOptions(url: string): RedisOptions {
  const m = /^sentinel:\/\/(?:([^:@/]*)(?::([^@/]*))?@)?([^/?]+)\/([^/?]+)(?:\/(\d+))?\/?(?:\?(.*))?$/.exec(url);
  if (!m) throw new Error(`redis.url ${redactRedisUrl(url)}: a Sentinel URL is sentinel://host:port[,host:port...]/<master name>[/<db>]`);
  const [, user, password, hosts, name, db, query] = m;
  const params = new URLSearchParams(query ?? '');
  const sentinelPassword = params.get('sentinelPassword');
  return {
    sentinels: hosts!.split(',').map((h) => {
      const at = h.trim().lastIndexOf(':');
      const host = at > 0 ? h.trim().slice(0, at) : h.trim();
      return { host: host.replace(/^\[|\]$/g, ''), port: at > 0 ? Number(h.trim().slice(at + 1)) : 26379 };
    }),
    name: decodeURIComponent(name!),
    role: 'master',
    // Told of a failover by the Sentinels themselves, not only when the old master goes away.
    failoverDetector: true,
    ...(user ? { username: decodeURIComponent(user) } : {}),
    ...(password ? { password: decodeURIComponent(password) } : {}),
    ...(db ? { db: Number(db) } : {}),
    ...(sentinelPassword ? { sentinelPassword } : {}),
  };
}

/** A client for one server (`redis://`, `rediss://`, `unix://`) or a Sentinel-watched master (`sentinel://`). */
export function redisClient(url: string, options: RedisOptions): Redis {
  return url.startsWith('sentinel://') ? new Redis({ ...sentinelOptions(url), ...options }) : new Redis(redisTarget(url), options);
}

export type { Redis };
