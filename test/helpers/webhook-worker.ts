/**
 * The production webhook processor under a real BullMQ worker, beside an api-role test engine (which has no
 * webhook consumer): the test queues the webhook jobs by hand, and may give the processor its own resolver.
 */
import { Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import type { CreatedAccount } from '../../src/accounts/account-store.js';
import { WebhookProcessor, type WebhookProcessorDeps } from '../../src/events/webhook-processor.js';
import { WEBHOOK_QUEUE, WebhookQueue, type WebhookJobData } from '../../src/events/webhook-queue.js';
import type { ResolveAll } from '../../src/events/webhook-target.js';
import { Metrics } from '../../src/metrics/metrics.js';
import type { Method } from '../../src/verification/types.js';
import { VerificationService } from '../../src/verification/verification-service.js';
import { waitFor, type TestEngine } from './engine.js';

export interface WebhookWorker {
  processor: WebhookProcessor;
  queue: WebhookQueue;
  metrics: Metrics;
  /** What the processor logged at warn and above (JSON lines). */
  warnings: string[];
  /** Creates a flash-call request of `account` (no delivery job) and queues the webhook job of its `sent` event; its event id. */
  queueSent(account: CreatedAccount, phone: string): Promise<string>;
  /** Waits until `count` webhook jobs have failed for good (BullMQ's failed set), and gives them. */
  failed(count: number, timeoutMs?: number): Promise<Job<WebhookJobData>[]>;
  /** The value of a sample in /metrics (`name{labels}`), 0 when absent. */
  metric(sample: string): Promise<number>;
  stop(): Promise<void>;
}

/** The production webhook processor on the test engine's Redis, keys, sealer and `webhooks` config. */
export function webhookProcessor(t: TestEngine, deps: Pick<WebhookProcessorDeps, 'metrics' | 'logger' | 'resolveAll' | 'directWaitMs' | 'heldJobs'>): WebhookProcessor {
  return new WebhookProcessor({ redis: t.redis, keys: t.keys, sealer: t.sealer, config: t.config.webhooks, ...deps });
}

export function startWebhookWorker(t: TestEngine, options: { concurrency: number; resolveAll?: ResolveAll }): WebhookWorker {
  const workerRedis = new Redis(t.config.redis.url, { maxRetriesPerRequest: null });
  const queue = new WebhookQueue(workerRedis, t.keys.bullPrefix(), t.config.webhooks);
  const metrics = new Metrics({ defaultMetrics: false });
  const warnings: string[] = [];
  const logger = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(line) });
  const processor = webhookProcessor(t, { metrics, logger, resolveAll: options.resolveAll, heldJobs: queue });
  metrics.watchWebhookDns(processor.hosts);
  const worker = new Worker<WebhookJobData>(WEBHOOK_QUEUE, (job, token) => processor.process(job, token), {
    connection: workerRedis,
    prefix: t.keys.bullPrefix(),
    concurrency: options.concurrency,
  });
  const service = new VerificationService(t.redis, t.keys, t.sealer, t.config, { enqueue: async () => undefined }, pino({ level: 'silent' }), new Set<Method>(['flash_call']));
  return {
    processor,
    queue,
    metrics,
    warnings,
    async queueSent(account, phone) {
      const { request_id } = await service.create(account, { phone_number: phone });
      // The job a webhook consumer would make of the request's `sent` event: the stream entry's id (its order entry).
      const event_id = (await t.redis.xrange(t.keys.events(), '-', '+')).find(([, f]) => f[f.indexOf('request_id') + 1] === request_id)![0];
      await queue.add({ event_id, event: 'verification.sent', request_id, account_id: account.account_id, method: 'flash_call', status: 'sent', timestamp: Date.now() });
      return event_id;
    },
    failed(count, timeoutMs = 10_000) {
      return waitFor(async () => {
        const jobs = await queue.queue.getFailed();
        return jobs.length === count ? jobs : undefined;
      }, timeoutMs);
    },
    async metric(sample) {
      const line = (await metrics.render()).split('\n').find((l) => l.startsWith(`${sample} `));
      return line ? Number(line.slice(sample.length + 1)) : 0;
    },
    async stop() {
      await worker.close(true);
      processor.close();
      await queue.close();
      workerRedis.disconnect();
    },
  };
}
