import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Redis } from 'ioredis';
import { pino, type Logger } from 'pino';
import { AccountNotFoundError, AccountStore, type Account } from './accounts/account-store.js';
import { consumeRateLimit } from './api/rate-limit.js';
import { loadConfig } from './config/load.js';
import type { Config } from './config/schema.js';
import { resolveMasterKeys } from './crypto/master-key.js';
import { checkMasterKey } from './crypto/key-check.js';
import { Sealer } from './crypto/sealer.js';
import { BullDeliveryQueue } from './engine/queues.js';
import { BullStepTimer } from './engine/step-timer.js';
import { ConfigError } from './errors/app-error.js';
import { ensureEventGroups } from './events/event-groups.js';
import { EventPublisher } from './events/event-publisher.js';
import { CounterBatch } from './store/counter-batch.js';
import { Keys } from './store/keys.js';
import { connectBullRedis, connectRedis, isRedisUnavailable, waitForRedis } from './store/redis.js';
import { ApiError } from './verification/errors.js';
import { DELIVERABLE_METHODS, type CreatedBody, type Method } from './verification/types.js';
import { FraudControls } from './verification/fraud-controls.js';
import type { ResentBody } from './verification/resend.js';
import { VerificationService } from './verification/verification-service.js';

export { ApiError } from './verification/errors.js';
export type { ApiErrorCode } from './verification/errors.js';
export type { CreatedBody, Method } from './verification/types.js';
export type { ResentBody } from './verification/resend.js';

export interface ProducerConnectOptions {
  /**
   * The engine's configuration, loaded as the engine loads it. Pricing, expiry
   * limits, rate limits and the master key must match the engine's, so pass it
   * when you have it. Without it the defaults are loaded (config/default.yaml,
   * then `configFile`, then `env`) and `redisUrl`, `prefix`, `masterKey` are
   * laid over them.
   */
  config?: Readonly<Config>;
  configFile?: string;
  /** Environment read for overrides when `config` is absent (default: none, so a host service's PORT etc. never leak in). */
  env?: NodeJS.ProcessEnv;
  redisUrl?: string;
  prefix?: string;
  /** The engine's `redis.cluster`: `redisUrl` then lists the cluster's seed nodes, and `prefix` carries a hash tag. */
  redisCluster?: boolean;
  /** 32 bytes as 64 hex characters or base64: the engine's `security.masterKey`. */
  masterKey?: string;
  /**
   * Methods whose workers run on the deployment (default: all three). A job
   * for a method nobody works would sit in its queue until the code expires.
   */
  methods?: readonly Method[];
  /** Count each create against the account's per-second rate limit, shared with HTTP (default true). */
  rateLimit?: boolean;
  logger?: Logger;
}

/** Who asks: API credentials (checked as Basic auth is), or an account id the calling service already trusts. */
export type ProducerCredentials = { apiKey: string; apiSecret: string } | { accountId: string };

/** The body of POST /v1/verify, as the producer takes it (the README's API reference says what each field does). */
export interface CreateVerificationInput {
  phone_number: string;
  /** One method, or `auto`: the server's default workflow. */
  method?: Method | 'auto';
  code_length?: number;
  expiry_seconds?: number;
  /** Language of the voice announcement or SMS text (en, fr, es, de ...); default by destination country. */
  locale?: string;
  /** The end user's IP address, for the per-IP velocity limit (`fraud.velocity.perIp`). */
  client_ip?: string;
  /** true: a live verification of this number is sent again (a ResentBody) instead of 409. */
  resend?: boolean;
  /** Fallback steps, in order (exclusive with `method`). */
  workflow?: { method: Method; timeout_seconds?: number; code_length?: number }[];
}

/**
 * Creates verifications from inside another Node service, without HTTP: the
 * same validation, pricing, balance debit, rate limit and sealed record as
 * `POST /v1/verify`, then the same BullMQ job. Failures are `ApiError`s whose
 * `code` and `status` are those the HTTP API would answer.
 *
 * ```ts
 * const producer = await FlashVerifyProducer.connect({ redisUrl, prefix: 'fv', masterKey });
 * const created = await producer.createVerification({ apiKey, apiSecret }, { phone_number: '+447700900000' });
 * await producer.close();
 * ```
 */
export class FlashVerifyProducer {
  private constructor(
    private readonly config: Readonly<Config>,
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly accounts: AccountStore,
    private readonly verifications: VerificationService,
    private readonly queue: BullDeliveryQueue,
    private readonly bullConnection: Redis,
    private readonly enforceRateLimit: boolean,
    /** The fraud controls' counter batch: written by close(). */
    private readonly counters: CounterBatch,
    /** A workflow's step timers (the step-0 timer is added with the request, as the api does). */
    private readonly stepTimer: BullStepTimer,
  ) {}

  static async connect(options: ProducerConnectOptions = {}): Promise<FlashVerifyProducer> {
    const config =
      options.config ??
      loadConfig({
        file: options.configFile,
        env: options.env ?? {},
        overrides: {
          ...(options.redisUrl !== undefined || options.prefix !== undefined || options.redisCluster !== undefined
            ? {
                redis: {
                  ...(options.redisUrl !== undefined && { url: options.redisUrl }),
                  ...(options.prefix !== undefined && { prefix: options.prefix }),
                  ...(options.redisCluster !== undefined && { cluster: options.redisCluster }),
                },
              }
            : {}),
          ...(options.masterKey !== undefined && { security: { masterKey: options.masterKey } }),
        },
      });
    // The engine creates a key file on first start; a producer must never invent a key of its own
    // (the workers could not open what it seals).
    if (!config.security.masterKey && !existsSync(resolve(config.security.masterKeyFile))) {
      throw new ConfigError([
        `security.masterKey: not given and ${config.security.masterKeyFile} does not exist; pass the engine's master key`,
      ]);
    }
    const material = resolveMasterKeys(config.security);
    const sealer = new Sealer(material.current, material.previous);
    const logger = options.logger ?? pino({ level: 'silent' });
    const keys = new Keys(config.redis.prefix);
    const redis = connectRedis(config.redis, logger);
    const bullConnection = connectBullRedis(config.redis, logger);
    try {
      // As the engine starts: Redis given redis.startupWaitMs to answer, then an error naming it (not ioredis's
      // "max retries per request").
      await waitForRedis(redis, config.redis.url, config.redis.startupWaitMs);
      await checkMasterKey(redis, keys.keyCheck(), sealer);
      // Before this producer writes its first event (see event-groups.ts).
      await ensureEventGroups(redis, keys, config.events);
    } catch (err) {
      redis.disconnect();
      bullConnection.disconnect();
      throw err;
    }
    const queue = new BullDeliveryQueue(bullConnection, keys.bullPrefix());
    const stepTimer = new BullStepTimer(bullConnection, keys.bullPrefix());
    const accounts = new AccountStore(redis, keys, sealer, { allowPrivateWebhooks: config.webhooks.allowPrivate });
    const fraudLogger = logger.child({ module: 'fraud' });
    // The fraud controls' counter batch (written every 250 ms; close() writes the last ones). Sends are not in it: the
    // create script counts them in the conversion hash itself.
    const counters = new CounterBatch(redis, fraudLogger);
    const verifications = new VerificationService(
      redis,
      keys,
      sealer,
      config,
      queue,
      logger.child({ module: 'producer' }),
      new Set<Method>(options.methods ?? DELIVERABLE_METHODS),
      // The same abuse controls as the HTTP API: velocity, country and line-type rules, one live request, test numbers.
      new FraudControls({
        redis,
        keys,
        sealer,
        config,
        events: new EventPublisher(redis, keys, config.events.maxLen),
        logger: fraudLogger,
        counters,
      }),
      // Without it, a workflow's first step would never time out into the next.
      stepTimer,
    );
    return new FlashVerifyProducer(config, redis, keys, accounts, verifications, queue, bullConnection, options.rateLimit ?? true, counters, stepTimer);
  }

  /**
   * Starts a verification; resolves to exactly the 201 body of POST /v1/verify (the 200 body, with `sends`, of a
   * resend). Throws ApiError: unauthorized, invalid_phone, invalid_request, insufficient_balance, account_pending,
   * account_suspended, rate_limited, verification_pending, service_unavailable.
   */
  async createVerification(who: ProducerCredentials, input: CreateVerificationInput): Promise<CreatedBody | ResentBody> {
    try {
      const account = await this.account(who);
      if (this.enforceRateLimit) {
        await consumeRateLimit(this.redis, this.keys, account, this.config.api.defaultRateLimitPerSecond);
      }
      // A copy, so fields the caller's object carries beyond the typed ones are refused as the API refuses them.
      return await this.verifications.create(account, { ...input });
    } catch (err) {
      // Redis unreachable is a 503 on HTTP; anything else unexpected is rethrown as is (more useful in-process than a bare 500).
      if (!(err instanceof ApiError) && err instanceof Error && isRedisUnavailable(err)) throw new ApiError('service_unavailable');
      throw err;
    }
  }

  async close(): Promise<void> {
    // The enqueue intents the last creates cleared (else the reconciler finds them and logs an api that died).
    await this.verifications.flush().catch(() => undefined);
    await this.queue.close();
    await this.stepTimer.close().catch(() => undefined);
    // Logged by the batch when Redis is gone; the connection closes all the same.
    await this.counters.close().catch(() => undefined);
    await this.redis.quit().catch(() => undefined);
    await this.bullConnection.quit().catch(() => undefined);
  }

  private async account(who: ProducerCredentials): Promise<Account> {
    if ('accountId' in who) {
      try {
        return await this.accounts.get(who.accountId);
      } catch (err) {
        if (err instanceof AccountNotFoundError) throw new ApiError('unauthorized', `no account ${who.accountId}`);
        throw err;
      }
    }
    const account = await this.accounts.authenticate(who.apiKey, who.apiSecret);
    if (!account) throw new ApiError('unauthorized');
    return account;
  }
}

