/**
 * The verification service straight on the test Redis, without an engine: for tests that drive the Lua scripts,
 * the expiry sweeper and the service by hand.
 */
import { Redis } from 'ioredis';
import { pino, type Logger } from 'pino';
import { AccountStore, type CreatedAccount } from '../../src/accounts/account-store.js';
import type { Config } from '../../src/config/schema.js';
import { Sealer } from '../../src/crypto/sealer.js';
import { Keys } from '../../src/store/keys.js';
import { utcDay, type Method } from '../../src/verification/types.js';
import { VerificationService } from '../../src/verification/verification-service.js';
import { REDIS_URL, deletePrefix, testConfig } from './engine.js';

export interface ServiceOnRedis {
  config: Readonly<Config>;
  keys: Keys;
  sealer: Sealer;
  /** Silent. */
  logger: Logger;
  redis: Redis;
  /** No delivery queue: a create writes its request and its `sent` event, and queues nothing. */
  service: VerificationService;
  /** An active account, created with a balance of 10 GBP. */
  account: CreatedAccount;
  /** The account's balance now. */
  balance(): Promise<number>;
  /** The account's count of `method` attempts today (UTC). */
  usage(method: string): Promise<number>;
  /** A request's `cost`. */
  cost(requestId: string): Promise<number>;
  /** Deletes the test's prefix and closes the connection. */
  stop(): Promise<void>;
}

/** A VerificationService offering `methods`, on its own Redis prefix, with one account. */
export async function startServiceOnRedis(methods: readonly Method[], config: Readonly<Config> = testConfig()): Promise<ServiceOnRedis> {
  const keys = new Keys(config.redis.prefix);
  const sealer = new Sealer(Buffer.from(config.security.masterKey, 'hex'));
  const logger = pino({ level: 'silent' });
  const redis = new Redis(REDIS_URL);
  const service = new VerificationService(redis, keys, sealer, config, { enqueue: async () => undefined }, logger, new Set<Method>(methods));
  const account = await new AccountStore(redis, keys, sealer).create({ name: 'x', balance: 10, currency: 'GBP', active: true }).catch((err: unknown) => {
    redis.disconnect();
    throw err;
  });
  return {
    config,
    keys,
    sealer,
    logger,
    redis,
    service,
    account,
    balance: async () => Number(await redis.hget(keys.account(account.account_id), 'balance')),
    usage: async (method) => Number((await redis.hget(keys.usage(account.account_id, utcDay(Date.now())), `${method}:count`)) ?? 0),
    cost: async (id) => Number(await redis.hget(keys.verification(id), 'cost')),
    async stop() {
      await deletePrefix(redis, config.redis.prefix);
      await redis.quit();
    },
  };
}
