#!/usr/bin/env node
import { hostname } from 'node:os';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker, type ConnectionOptions } from 'bullmq';
import type { FastifyInstance } from 'fastify';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { AccountStore } from './accounts/account-store.js';
import { CURRENCIES, type Currency } from './accounts/money.js';
import { buildApi } from './api/app.js';
import { loadConfig } from './config/load.js';
import type { Config } from './config/schema.js';
import { resolveMasterKeys } from './crypto/master-key.js';
import { Sealer } from './crypto/sealer.js';
import { FlashProcessor } from './engine/flash-processor.js';
import { TrunkPacer } from './engine/trunk-pacer.js';
import { VoiceProcessor } from './engine/voice-processor.js';
import { BullDeliveryQueue, QUEUE_NAMES, type DeliveryJobData } from './engine/queues.js';
import { AppError, ConfigError } from './errors/app-error.js';
import { EventPublisher } from './events/event-publisher.js';
import { StatusConsumer } from './events/status-consumer.js';
import { WebhookConsumer } from './events/webhook-consumer.js';
import { WebhookProcessor } from './events/webhook-processor.js';
import { WEBHOOK_QUEUE, WebhookQueue, type WebhookJobData } from './events/webhook-queue.js';
import { createLogger } from './logging/logger.js';
import { MetricsServer, type ReadinessProbes } from './metrics/metrics-server.js';
import { Metrics } from './metrics/metrics.js';
import { RangeSelector } from './numbers/range-selector.js';
import type { CallOriginator } from './sip/call-originator.js';
import { Keys } from './store/keys.js';
import { connectRedis } from './store/redis.js';
import { DELIVERABLE_METHODS, type Method } from './verification/types.js';
import { ExpirySweeper } from './verification/expiry-sweeper.js';
import { VerificationService } from './verification/verification-service.js';

export type Role = 'all' | 'api' | 'worker';

export interface Engine {
  /** HTTP address when the api role runs, e.g. http://127.0.0.1:8080. */
  readonly httpUrl: string | undefined;
  /** Bound SIP port when the worker role runs. */
  readonly sipPort: number | undefined;
  /** The operator listener (/metrics, /healthz, /readyz) of `--role worker`, when metrics.port is not 0. */
  readonly metricsUrl: string | undefined;
  stop(): Promise<void>;
}

/** Wires every module for the given role and starts it. The only place modules meet. */
export async function startEngine(config: Readonly<Config>, role: Role, logger: Logger): Promise<Engine> {
  const keysMaterial = resolveMasterKeys(config.security);
  if (keysMaterial.created) {
    logger.warn({ file: config.security.masterKeyFile }, 'no master key configured: generated one into this file; back it up');
  }
  const sealer = new Sealer(keysMaterial.current, keysMaterial.previous);
  const keys = new Keys(config.redis.prefix);
  const redis = connectRedis(config.redis.url, logger);
  const bullConnection: ConnectionOptions = new Redis(config.redis.url, { maxRetriesPerRequest: null });
  const events = new EventPublisher(redis, keys, config.events.maxLen);
  const stops: (() => Promise<unknown>)[] = [];
  const methods = new Set<Method>(DELIVERABLE_METHODS);
  const metrics = new Metrics();
  const redisProbe = async (): Promise<boolean> => (await redis.ping()) === 'PONG';
  // Readiness of what this process runs besides Redis (the API adds its own Redis probe).
  const readiness: ReadinessProbes = {};

  let app: FastifyInstance | undefined;
  let sipPort: number | undefined;
  let metricsUrl: string | undefined;
  try {
    if (role === 'all' || role === 'worker') {
      // Loaded only by the worker role: the api role never opens SIP sockets.
      const { EmbeddedSipOriginator } = await import('./sip/embedded-originator.js');
      const originator = new EmbeddedSipOriginator({
        listen: config.sip.listen,
        timers: config.sip.timers,
        userAgent: config.sip.userAgent,
        logger: logger.child({ module: 'sip' }),
      });
      await originator.start();
      sipPort = originator.localPort;
      const sip: CallOriginator = originator;
      stops.push(() => sip.stop());
      metrics.watchActiveCalls(originator);
      readiness.sip = () => originator.started;
      // Shared by every channel: one CPS budget per trunk, one cooldown table per process.
      const trunks = new TrunkPacer(config.sip.trunks);
      const ranges = new RangeSelector(config.numbers.ranges, redis, keys, config.numbers.cliCooldownSeconds, (cli) =>
        sealer.mac('cli', cli),
      );
      const flash = new FlashProcessor({
        redis,
        keys,
        sealer,
        config,
        originator: sip,
        ranges,
        trunks,
        events,
        metrics,
        logger: logger.child({ module: 'flash' }),
      });
      // One BullMQ worker per delivery queue; a job carries only the request id.
      const deliveryWorker = (method: Method, name: string, run: (requestId: string) => Promise<unknown>, concurrency: number): void => {
        const queue = QUEUE_NAMES[method];
        const w = new Worker<DeliveryJobData>(
          queue,
          async (job) => {
            metrics.jobStarted(queue, job.timestamp, job.processedOn);
            await run(job.data.request_id);
          },
          { connection: bullConnection, prefix: keys.bullPrefix(), concurrency, maxStalledCount: config.worker.maxStalledCount },
        );
        w.on('failed', (job, err) => logger.error({ request_id: job?.data.request_id, err: err.message }, `${name} job failed`));
        w.on('error', (err) => logger.warn({ err: err.message }, `${name} worker error`));
        stops.unshift(() => w.close());
      };
      deliveryWorker('flash_call', 'flash', (id) => flash.process(id), config.worker.flashConcurrency);

      const { EmbeddedMediaPlayer } = await import('./media/rtp/embedded-media-player.js');
      const player = new EmbeddedMediaPlayer({
        bindHost: config.sip.listen.host,
        advertisedHost:
          config.media.rtp.advertisedHost ??
          config.sip.listen.advertisedHost ??
          ({ '0.0.0.0': '127.0.0.1', '::': '::1' }[config.sip.listen.host] ?? config.sip.listen.host),
        portMin: config.media.rtp.portMin,
        portMax: config.media.rtp.portMax,
      });
      player.prompts.preload(); // a missing prompt file fails the boot, not a call
      stops.push(() => player.stop());
      const voice = new VoiceProcessor({
        redis,
        keys,
        sealer,
        config,
        originator: sip,
        player,
        ranges,
        trunks,
        events,
        metrics,
        logger: logger.child({ module: 'voice' }),
      });
      deliveryWorker('voice', 'voice', (id) => voice.process(id), config.worker.voiceConcurrency);

      const consumer = new StatusConsumer(
        connectRedis(config.redis.url, logger),
        keys,
        config.events.consumerGroup,
        `${hostname()}-${process.pid}`,
        logger.child({ module: 'events' }),
        metrics,
      );
      await consumer.start();
      stops.push(() => consumer.stop());

      // Webhooks run wherever workers run: a consumer group turns events into jobs, a worker sends them.
      const webhookQueue = new WebhookQueue(bullConnection, keys.bullPrefix(), config.webhooks);
      stops.push(() => webhookQueue.close());
      metrics.watchQueue(WEBHOOK_QUEUE, webhookQueue.queue);
      const webhookConsumer = new WebhookConsumer(
        connectRedis(config.redis.url, logger),
        keys,
        config.events.webhookGroup,
        `${hostname()}-${process.pid}`,
        logger.child({ module: 'webhooks' }),
        webhookQueue,
      );
      await webhookConsumer.start();
      stops.push(() => webhookConsumer.stop());
      const webhooks = new WebhookProcessor({
        redis,
        keys,
        sealer,
        accounts: new AccountStore(redis, keys, sealer, { allowPrivateWebhooks: config.webhooks.allowPrivate }),
        config: config.webhooks,
        metrics,
        logger: logger.child({ module: 'webhooks' }),
      });
      const webhookWorker = new Worker<WebhookJobData>(
        WEBHOOK_QUEUE,
        (job, token) => {
          // Only a first run measures queueing: retries and order waits are delayed on purpose.
          if (job.attemptsMade === 0 && !job.data.waits) metrics.jobStarted(WEBHOOK_QUEUE, job.timestamp, job.processedOn);
          return webhooks.process(job, token);
        },
        {
        connection: bullConnection,
        prefix: keys.bullPrefix(),
          concurrency: config.webhooks.concurrency,
        },
      );
      webhookWorker.on('error', (err) => logger.warn({ err: err.message }, 'webhook worker error'));
      stops.unshift(() => webhookWorker.close());

      const sweeper = new ExpirySweeper(
        redis,
        keys,
        { intervalMs: config.verification.expirySweepMs, eventsMaxLen: config.events.maxLen },
        logger.child({ module: 'expiry' }),
      );
      sweeper.start();
      stops.unshift(() => sweeper.stop());
      if (role === 'worker' && config.metrics.port !== 0) {
        const server = new MetricsServer({
          host: config.metrics.host,
          port: config.metrics.port,
          metrics: config.metrics.enabled ? metrics : undefined,
          readiness: { redis: redisProbe, ...readiness },
          logger: logger.child({ module: 'metrics' }),
        });
        await server.listen();
        stops.unshift(() => server.close());
        metricsUrl = server.url;
        logger.info({ url: metricsUrl }, 'metrics and health listening');
      }
      logger.info({ sip_port: sipPort, trunks: config.sip.trunks.map((t) => t.name) }, 'worker role started');
    }

    if (role === 'all' || role === 'api') {
      const queue = new BullDeliveryQueue(bullConnection, keys.bullPrefix());
      stops.push(() => queue.close());
      for (const m of methods) metrics.watchQueue(QUEUE_NAMES[m], queue.queue(m));
      const accounts = new AccountStore(redis, keys, sealer, { allowPrivateWebhooks: config.webhooks.allowPrivate });
      const verifications = new VerificationService(redis, keys, sealer, config, queue, logger.child({ module: 'verify' }), methods);
      const api = buildApi({ config, redis, keys, accounts, verifications, logger, metrics, readiness });
      app = api;
      await api.listen({ host: config.http.host, port: config.http.port });
      stops.unshift(() => api.close());
    }
  } catch (err) {
    for (const stop of stops) await stop().catch(() => undefined);
    redis.disconnect();
    (bullConnection as Redis).disconnect();
    throw err;
  }

  const address = app?.server.address();
  const httpUrl =
    address && typeof address === 'object'
      ? `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`
      : undefined;
  if (httpUrl) logger.info({ url: httpUrl }, 'api role listening');
  return {
    httpUrl,
    sipPort,
    metricsUrl,
    async stop() {
      for (const stop of stops) await stop().catch((err: Error) => logger.warn({ err: err.message }, 'stop step failed'));
      await redis.quit().catch(() => undefined);
      await (bullConnection as Redis).quit().catch(() => undefined);
    },
  };
}

const USAGE = `flashverify — phone-number verification engine (flash call, voice OTP, SMS OTP)

Usage:
  flashverify start [--role all|api|worker] [--config FILE]
  flashverify account create --name NAME [--balance 10] [--currency GBP|USD|EUR] [--active]
  flashverify account show ACCOUNT_ID
  flashverify account approve ACCOUNT_ID
  flashverify account suspend ACCOUNT_ID
  flashverify account topup ACCOUNT_ID --amount 10
  flashverify account regenerate-secret ACCOUNT_ID
  flashverify account set-webhook ACCOUNT_ID (--url URL | --clear)
  flashverify account set-rate-limit ACCOUNT_ID (--rps N | --clear)

Configuration: config/default.yaml, then --config FILE or FLASHVERIFY_CONFIG,
then environment variables (REDIS_URL, PORT, SIP_TRUNK_URI, SIP_LISTEN_PORT,
SMPP_URL, FLASHVERIFY_MASTER_KEY, LOG_LEVEL).`;

/** The CLI. Returns the exit code. */
export async function runCli(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      role: { type: 'string', default: 'all' },
      config: { type: 'string' },
      name: { type: 'string' },
      balance: { type: 'string' },
      currency: { type: 'string' },
      active: { type: 'boolean', default: false },
      amount: { type: 'string' },
      url: { type: 'string' },
      clear: { type: 'boolean', default: false },
      rps: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const [command, sub, id] = positionals;
  if (values.help || !command) {
    process.stdout.write(USAGE + '\n');
    return command || values.help ? 0 : 2;
  }
  const config = loadConfig({ file: values.config });
  const logger = createLogger({ level: config.log.level, pretty: config.log.pretty });

  if (command === 'start') {
    const role = values.role as Role;
    if (!['all', 'api', 'worker'].includes(role)) throw new AppError('usage', `--role must be all, api or worker, not "${role}"`);
    const engine = await startEngine(config, role, logger);
    await new Promise<void>((resolve) => {
      const onSignal = (signal: string) => {
        logger.info({ signal }, 'shutting down');
        resolve();
      };
      process.once('SIGTERM', () => onSignal('SIGTERM'));
      process.once('SIGINT', () => onSignal('SIGINT'));
    });
    await engine.stop();
    return 0;
  }

  if (command === 'account') {
    const keysMaterial = resolveMasterKeys(config.security);
    const redis = connectRedis(config.redis.url, logger, { maxRetriesPerRequest: 1 });
    try {
      const store = new AccountStore(redis, new Keys(config.redis.prefix), new Sealer(keysMaterial.current, keysMaterial.previous), {
        allowPrivateWebhooks: config.webhooks.allowPrivate,
      });
      const need = (v: string | undefined, what: string): string => {
        if (!v) throw new AppError('usage', `account ${sub}: ${what} is required\n\n${USAGE}`);
        return v;
      };
      const amount = (v: string | undefined, what: string): number => {
        const n = Number(need(v, what));
        if (!Number.isFinite(n) || n < 0) throw new AppError('usage', `${what} must be a non-negative number`);
        return n;
      };
      let out: unknown;
      switch (sub) {
        case 'create': {
          const currency = (values.currency ?? config.accounts.defaultCurrency) as Currency;
          if (!CURRENCIES.includes(currency)) throw new AppError('usage', `--currency must be one of ${CURRENCIES.join(', ')}`);
          out = await store.create({
            name: need(values.name, '--name'),
            balance: values.balance === undefined ? 0 : amount(values.balance, '--balance'),
            currency,
            active: values.active,
          });
          break;
        }
        case 'show':
          out = await store.get(need(id, 'ACCOUNT_ID'));
          break;
        case 'approve':
          out = await store.setStatus(need(id, 'ACCOUNT_ID'), 'active');
          break;
        case 'suspend':
          out = await store.setStatus(need(id, 'ACCOUNT_ID'), 'suspended');
          break;
        case 'topup':
          out = await store.topUp(need(id, 'ACCOUNT_ID'), amount(values.amount, '--amount'));
          break;
        case 'regenerate-secret':
          out = await store.regenerateSecret(need(id, 'ACCOUNT_ID'));
          break;
        case 'set-webhook':
          if (!values.clear) need(values.url, '--url (or --clear)');
          out = await store.setWebhook(need(id, 'ACCOUNT_ID'), values.clear ? null : values.url!);
          break;
        case 'set-rate-limit': {
          const rps = values.clear ? null : Number(need(values.rps, '--rps (or --clear)'));
          if (rps !== null && !(Number.isInteger(rps) && rps > 0)) throw new AppError('usage', '--rps must be a positive whole number');
          out = await store.setRateLimit(need(id, 'ACCOUNT_ID'), rps);
          break;
        }
        default:
          throw new AppError('usage', `unknown account command "${sub ?? ''}"\n\n${USAGE}`);
      }
      process.stdout.write(JSON.stringify(out, null, 2) + '\n');
      return 0;
    } finally {
      redis.disconnect();
    }
  }
  throw new AppError('usage', `unknown command "${command}"\n\n${USAGE}`);
}

function isMain(): boolean {
  if (!process.argv[1]) return false;
  try {
    return realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) {
  runCli(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      if (err instanceof ConfigError) process.stderr.write(`flashverify: ${err.message}\n`);
      else if (err instanceof AppError) process.stderr.write(`flashverify: ${err.message}\n`);
      else if (err instanceof Error && 'code' in err && err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
        process.stderr.write(`flashverify: ${err.message}\n\n${USAGE}\n`);
        return process.exit(2);
      } else process.stderr.write(`flashverify: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(err instanceof ConfigError ? 78 : 1);
    },
  );
}
