import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from 'pino';

/**
 * A Redis connection for flashverify's own commands. BullMQ makes its own
 * connections (it needs maxRetriesPerRequest: null for blocking commands).
 */
export function connectRedis(url: string, logger: Logger, options: RedisOptions = {}): Redis {
  const redis = new Redis(redisTarget(url), {
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
  let lastError = '';
  redis.on('error', (err: Error) => {
    if (err.message !== lastError) logger.warn({ err: err.message }, 'redis connection error');
    lastError = err.message;
  });
  redis.on('ready', () => {
    if (lastError) logger.info('redis connection restored');
    lastError = '';
  });
  return redis;
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
  if (!url.startsWith('unix://')) return url;
  const path = url.slice('unix://'.length);
  if (!path.startsWith('/')) throw new Error(`redis.url ${url}: a unix:// URL needs an absolute socket path (unix:///path/to/redis.sock)`);
  return path;
}

export type { Redis };
