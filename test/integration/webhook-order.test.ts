import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import { EventPublisher } from '../../src/events/event-publisher.js';
import type { StreamEntry } from '../../src/events/group-consumer.js';
import { WebhookConsumer } from '../../src/events/webhook-consumer.js';
import { WebhookProcessor } from '../../src/events/webhook-processor.js';
import { WEBHOOK_QUEUE, WebhookQueue, type WebhookJobData } from '../../src/events/webhook-queue.js';
import { Metrics } from '../../src/metrics/metrics.js';
import type { Method } from '../../src/verification/types.js';
import { VerificationService } from '../../src/verification/verification-service.js';
import { startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';

/** A loopback receiver that records the events it got, per request. */
class Receiver {
  readonly received: Record<string, unknown>[] = [];
  private server: Server | undefined;

  async start(): Promise<string> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        this.received.push(JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>);
        res.writeHead(200).end('ok');
      });
    });
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/hook`;
  }

  events(requestId: string): unknown[] {
    return this.received.filter((r) => r.request_id === requestId).map((r) => r.event);
  }

  async stop(): Promise<void> {
    await new Promise((r) => this.server?.close(r));
  }
}

/** The production consumer, driven by hand: the test decides which consumer reads and handles which entry, when. */
class HandDrivenConsumer extends WebhookConsumer {
  handleEntry(entry: StreamEntry): Promise<void> {
    return this.handle(entry);
  }
}

const silent = pino({ level: 'silent' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The webhook pipeline with its stream reads in the test's hands (api role: no consumer of its own), a real
 * BullMQ worker running the production processor, and a real HTTP receiver on loopback.
 */
describe('webhook order across redelivered and concurrently read stream entries', () => {
  let t: TestEngine;
  let receiver: Receiver;
  let account: Awaited<ReturnType<TestEngine['account']>>;
  let service: VerificationService;
  let publisher: EventPublisher;
  let queue: WebhookQueue;
  let worker: Worker<WebhookJobData>;
  let consumer: HandDrivenConsumer;
  let consumerRedis: Redis;
  let workerRedis: Redis;
  let group: string;
  const metrics = new Metrics({ defaultMetrics: false });

  beforeAll(async () => {
    t = await startTestEngine(
      testConfig({ webhooks: { allowPrivate: true, attempts: 3, backoffMs: 100, orderPollMs: 50 }, accounts: { fieldCacheMs: 0 } }),
      'api',
    );
    group = t.config.events.webhookGroup;
    receiver = new Receiver();
    const url = await receiver.start();
    account = await t.account();
    await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(account.account_id, url);
    service = new VerificationService(t.redis, t.keys, t.sealer, t.config, { enqueue: async () => undefined }, silent, new Set<Method>(['flash_call']));
    publisher = new EventPublisher(t.redis, t.keys, 1000);
    workerRedis = new Redis(t.config.redis.url, { maxRetriesPerRequest: null });
    queue = new WebhookQueue(workerRedis, t.keys.bullPrefix(), t.config.webhooks);
    const processor = new WebhookProcessor({
      redis: t.redis,
      keys: t.keys,
      sealer: t.sealer,
      accounts: new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }),
      config: t.config.webhooks,
      metrics,
      logger: silent,
    });
    worker = new Worker<WebhookJobData>(WEBHOOK_QUEUE, (job, token) => processor.process(job, token), {
      connection: workerRedis,
      prefix: t.keys.bullPrefix(),
      concurrency: 5,
    });
    consumerRedis = new Redis(t.config.redis.url);
    consumer = new HandDrivenConsumer(consumerRedis, t.keys, group, 'test', silent, queue, { fieldCacheMs: 0 });
  });
  afterAll(async () => {
    await worker?.close();
    await queue?.close();
    consumerRedis?.disconnect();
    await t?.stop();
    workerRedis?.disconnect();
    await receiver?.stop();
  });

  /** XREADGROUP as `name` in the webhooks group: what that consumer would get next. */
  async function read(name: string, count: number): Promise<StreamEntry[]> {
    const res = (await t.redis.xreadgroup('GROUP', group, name, 'COUNT', count, 'STREAMS', t.keys.events(), '>')) as
      | [string, [string, string[]][]][]
      | null;
    return (res?.[0]?.[1] ?? []).map(([id, flat]) => {
      const fields: Record<string, string> = {};
      for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
      return { id, fields };
    });
  }

  async function ack(entries: StreamEntry[]): Promise<void> {
    await t.redis.xack(t.keys.events(), group, ...entries.map((e) => e.id));
  }

  it('a stream entry handled again after its webhook was delivered does not hold back the later events', async () => {
    const { request_id: id } = await service.create(account, { phone_number: '+447700900200' });
    const sent = await read('a', 10);
    expect(sent.map((e) => e.fields.event)).toEqual(['verification.sent']);
    await consumer.handleEntry(sent[0]!);
    await waitFor(async () => receiver.events(id).length === 1);
    // The worker died before its XACK: another consumer claims the entry and handles it a second time.
    const claimed = (await t.redis.xclaim(t.keys.events(), group, 'b', 0, sent[0]!.id)) as [string, string[]][];
    expect(claimed).toHaveLength(1);
    await consumer.handleEntry(sent[0]!);
    await ack(sent);

    await publisher.publish({ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'delivered', detail: {} });
    const delivered = await read('b', 10);
    await consumer.handleEntry(delivered[0]!);
    await ack(delivered);
    // Promptly: before, it waited (re-polling up to every 60 s) until the order set expired, 3 days later.
    await waitFor(async () => receiver.events(id).length === 2, 3000);
    expect(receiver.events(id)).toEqual(['verification.sent', 'verification.delivered']);
  });

  /** Reads, handles and acknowledges every new entry, as one consumer would. */
  async function handleNew(): Promise<void> {
    const entries = await read('c', 100);
    for (const e of entries) await consumer.handleEntry(e);
    if (entries.length) await ack(entries);
  }

  it('sends no delivery receipt after verified and no late failure after expired', async () => {
    const verified = await service.create(account, { phone_number: '+447700900202' });
    const enc = await t.redis.hget(t.keys.verification(verified.request_id), 'code_enc');
    expect((await service.check(account, { request_id: verified.request_id, code: t.sealer.open(enc!, `code:${verified.request_id}`) })).status).toBe('verified');
    const expired = await service.create(account, { phone_number: '+447700900203' });
    // Maximum 3 attempts reached: the contract's "expired".
    for (let i = 0; i < 3; i++) await service.check(account, { request_id: expired.request_id, code: '0000' }).catch(() => undefined);
    expect(await t.redis.hget(t.keys.verification(expired.request_id), 'status')).toBe('expired');
    await handleNew();
    await waitFor(async () => receiver.events(verified.request_id).length === 2 && receiver.events(expired.request_id).length === 2);

    // Late receipts: the SMS reached the handset after the user verified; a failure report after the expiry.
    const late = [
      await publisher.publish({ request_id: verified.request_id, account_id: account.account_id, method: 'flash_call', status: 'delivered', detail: {} }),
      await publisher.publish({ request_id: expired.request_id, account_id: account.account_id, method: 'flash_call', status: 'failed', detail: { reason: 'unreachable' } }),
    ];
    await handleNew();
    await waitFor(async () => (await Promise.all(late.map((id) => queue.queue.getJobState(id)))).every((s) => s === 'completed'));
    expect(receiver.events(verified.request_id)).toEqual(['verification.sent', 'verification.verified']);
    expect(receiver.events(expired.request_id)).toEqual(['verification.sent', 'verification.expired']);
    expect(await metrics.registry.getSingleMetricAsString('flashverify_webhook_skipped_total')).toMatch(/ 2$/);
  });
});
