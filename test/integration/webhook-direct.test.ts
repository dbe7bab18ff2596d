/**
 * Webhooks sent at once by the consumer that reads their event (webhooks.direct), with no BullMQ job: an entry is
 * acknowledged only once its webhook is settled, so a stop waits for it, a dead sender's entry is reclaimed and sent
 * by another process, and an entry handled again after its webhook went out does not send it twice.
 * Real Redis, real HTTP receivers on loopback, real engine processes for the crash.
 */
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import { EventPublisher } from '../../src/events/event-publisher.js';
import type { StreamEntry } from '../../src/events/group-consumer.js';
import { WebhookConsumer } from '../../src/events/webhook-consumer.js';
import { WEBHOOK_QUEUE, WebhookQueue, type WebhookJobData } from '../../src/events/webhook-queue.js';
import { Metrics } from '../../src/metrics/metrics.js';
import type { Method } from '../../src/verification/types.js';
import { VerificationService } from '../../src/verification/verification-service.js';
import { engineCluster, sentAfterWebhooksKill, type EngineCluster } from '../helpers/engine-process.js';
import { http, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { Receiver } from '../helpers/webhook-receiver.js';
import { webhookProcessor } from '../helpers/webhook-worker.js';

const silent = pino({ level: 'silent' });

/** The production consumer; the test may hand it an entry itself (as a reclaim would) and wait until it is settled. */
class TestConsumer extends WebhookConsumer {
  async handleEntry(entry: StreamEntry): Promise<void> {
    const unsettled = await this.handle(entry);
    await unsettled?.settled;
  }
}

describe('webhooks sent directly by the consumer', () => {
  let t: TestEngine | undefined;
  let receiver: Receiver | undefined;
  let cluster: EngineCluster | undefined;
  const closers: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close();
    await cluster?.cleanup();
    await t?.stop();
    await receiver?.stop();
    cluster = t = receiver = undefined;
  });

  /** An api-role engine (no consumer of its own), an account whose URL is a receiver, and a consumer sending directly. */
  async function setUp(consumerOptions: { settleTimeoutMs?: number; maxUnsettled?: number } = {}, webhooks: { concurrency?: number; accountConcurrency?: number } = {}) {
    const engine = (t = await startTestEngine(testConfig({ webhooks: { allowPrivate: true, backoffMs: 100, orderPollMs: 50, ...webhooks }, accounts: { fieldCacheMs: 0 } }), 'api'));
    const r = (receiver = new Receiver());
    const url = await r.start();
    const account = await engine.account();
    r.secret = account.api_secret;
    await new AccountStore(engine.redis, engine.keys, engine.sealer, { allowPrivateWebhooks: true }).setWebhook(account.account_id, url);
    const metrics = new Metrics({ defaultMetrics: false });
    const processor = webhookProcessor(engine, { metrics, logger: silent, directWaitMs: 2000 });
    const queueRedis = new Redis(engine.config.redis.url, { maxRetriesPerRequest: null });
    const queue = new WebhookQueue(queueRedis, engine.keys.bullPrefix(), engine.config.webhooks);
    const consumerRedis = new Redis(engine.config.redis.url);
    const consumer = new TestConsumer(
      consumerRedis,
      engine.keys,
      engine.config.events.webhookGroup,
      'c1',
      silent,
      queue,
      { fieldCacheMs: 0, blockMs: 100, ackRedis: engine.redis, ...consumerOptions },
      processor,
    );
    closers.push(async () => {
      await consumer.stop();
      processor.close();
      await queue.close();
      queueRedis.disconnect();
    });
    const service = new VerificationService(engine.redis, engine.keys, engine.sealer, engine.config, { enqueue: async () => undefined }, silent, new Set<Method>(['flash_call']));
    const pending = async () => ((await engine.redis.xpending(engine.keys.events(), engine.config.events.webhookGroup)) as [number])[0];
    const jobs = async () => (await queue.queue.getJobs(['completed', 'failed', 'delayed', 'waiting', 'active'])).length;
    return { engine, r, account, consumer, service, metrics, pending, jobs, processor };
  }

  it('an entry handled again after its webhook was sent (a crash before its XACK) does not send it twice', async () => {
    const { engine, r, account, consumer, service, jobs } = await setUp();
    const { request_id } = await service.create(account, { phone_number: '+447700900700' });
    const res = (await engine.redis.xreadgroup('GROUP', engine.config.events.webhookGroup, 'c1', 'COUNT', 10, 'STREAMS', engine.keys.events(), '>')) as [string, [string, string[]][]][];
    const [id, flat] = res[0]![1][0]!;
    const fields: Record<string, string> = {};
    for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;

    await consumer.handleEntry({ id, fields });
    expect(r.forRequest(request_id).map((x) => [x.json.event, x.answered])).toEqual([['verification.sent', 200]]);
    // Handled again, as a reclaim after a crash would: found done, not sent again, and no job made for it.
    await consumer.handleEntry({ id, fields });
    await new Promise((done) => setTimeout(done, 200));
    expect(r.forRequest(request_id)).toHaveLength(1);
    expect(await jobs()).toBe(0);
  });

  it('a webhook answered 2xx whose bookkeeping then fails (Redis went away just then) is not sent again: the bookkeeping is retried', async () => {
    const { engine, r, account, consumer, service, jobs, processor } = await setUp();
    const { request_id } = await service.create(account, { phone_number: '+447700900701' });
    const res = (await engine.redis.xreadgroup('GROUP', engine.config.events.webhookGroup, 'c1', 'COUNT', 10, 'STREAMS', engine.keys.events(), '>')) as [string, [string, string[]][]][];
    const [id, flat] = res[0]![1][0]!;
    const fields: Record<string, string> = {};
    for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
    const target = processor as unknown as { markDone: (...args: unknown[]) => Promise<unknown> };
    const markDone = target.markDone.bind(processor);
    let refused = 0;
    vi.spyOn(target, 'markDone').mockImplementation(async (...args: unknown[]) => {
      if (refused++ < 2) throw new Error('Connection is closed.');
      return markDone(...args);
    });
    await consumer.handleEntry({ id, fields });
    await new Promise((done) => setTimeout(done, 500));
    expect(r.forRequest(request_id).map((x) => [x.json.event, x.answered])).toEqual([['verification.sent', 200]]);
    expect([refused, await jobs()]).toEqual([3, 0]);
    // Marked done in the end: handled again (a reclaim), it is not sent again.
    await consumer.handleEntry({ id, fields });
    expect(r.forRequest(request_id)).toHaveLength(1);
    vi.restoreAllMocks();
  });

  it('a burst of one account\'s events beyond its slots waits its turn and goes out directly, not as jobs', async () => {
    const { r, account, consumer, service, metrics, pending, jobs } = await setUp({}, { concurrency: 4, accountConcurrency: 2 });
    r.delayMs = 30;
    let open = 0;
    let maxOpen = 0;
    r.onRequest = () => {
      maxOpen = Math.max(maxOpen, ++open);
      setTimeout(() => open--, 30);
    };
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) ids.push((await service.create(account, { phone_number: `+4477009007${10 + i}` })).request_id);
    await consumer.start();
    await waitFor(async () => ids.every((id) => r.events(id).length === 1));
    // Two at a time (the account's slots), all ten sent by the consumer itself, in the order they were written.
    expect(maxOpen).toBe(2);
    expect(r.accepted().map((x) => x.json.request_id)).toEqual(ids);
    expect(await jobs()).toBe(0);
    await waitFor(async () => (await pending()) === 0);
    expect(await metrics.render()).toMatch(/^flashverify_webhook_direct_total\{result="done"\} 10$/m);
  });

  it('a rate the account\'s slots cannot carry: later events wait unread in the stream (maxUnsettled), not in memory until they become jobs', async () => {
    // One slot, 150 ms a webhook: 20 events take 3 s, beyond the 2 s a send may wait in memory (directWaitMs).
    const { r, account, consumer, service, metrics, pending, jobs } = await setUp({ maxUnsettled: 3 }, { concurrency: 1, accountConcurrency: 1 });
    r.delayMs = 150;
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) ids.push((await service.create(account, { phone_number: `+4477009008${10 + i}` })).request_id);
    await consumer.start();
    let mostPending = 0;
    await waitFor(async () => {
      mostPending = Math.max(mostPending, await pending());
      return ids.every((id) => r.events(id).length === 1);
    }, 10_000, 20);
    // Never more than 3 read and unsettled; all 20 sent by the consumer itself, in order, none turned into a job.
    expect(mostPending).toBeGreaterThan(0);
    expect(mostPending).toBeLessThanOrEqual(3);
    expect(r.accepted().map((x) => x.json.request_id)).toEqual(ids);
    expect(await jobs()).toBe(0);
    // Counted once its answer is in (the receiver records a request before it answers).
    await waitFor(async () => /^flashverify_webhook_direct_total\{result="done"\} 20$/m.test(await metrics.render()));
    expect(await metrics.render()).not.toMatch(/^flashverify_webhook_direct_total\{result="queued"\} [1-9]/m);
  });

  it('a stop while the read is held back by maxUnsettled ends at once; the unread events stay in the stream for the group', async () => {
    const { engine, r, account, consumer, service, pending } = await setUp({ maxUnsettled: 1, settleTimeoutMs: 200 });
    r.hang = true;
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push((await service.create(account, { phone_number: `+4477009008${40 + i}` })).request_id);
    await consumer.start();
    await waitFor(async () => r.received.length === 1);
    expect(await pending()).toBe(1);
    const t0 = Date.now();
    await consumer.stop();
    expect(Date.now() - t0).toBeLessThan(1500);
    // The one in hand stays pending (reclaimed later); the other two were never read: still ahead of the group.
    expect(await pending()).toBe(1);
    const info = (await engine.redis.xinfo('GROUPS', engine.keys.events())) as unknown[][];
    const group = info.find((g) => g[g.indexOf('name') + 1] === engine.config.events.webhookGroup)!;
    expect(Number(group[group.indexOf('lag') + 1])).toBe(2);
    await r.stop();
  });

  it('a request\'s later event read while its earlier one is being sent goes right after it, not as a job', async () => {
    const { engine, r, account, consumer, service, jobs } = await setUp();
    r.delayMs = 150;
    const { request_id } = await service.create(account, { phone_number: '+447700900730' });
    await new EventPublisher(engine.redis, engine.keys, 1000).publish({ request_id, account_id: account.account_id, method: 'flash_call', status: 'delivered', detail: {} });
    await consumer.start();
    await waitFor(async () => r.events(request_id).length === 2);
    expect(r.events(request_id)).toEqual(['verification.sent', 'verification.delivered']);
    expect(await jobs()).toBe(0);
  });

  it('a stop waits for a webhook in flight and acknowledges its entry', async () => {
    const { r, account, consumer, service, metrics, pending, jobs } = await setUp({ settleTimeoutMs: 3000 });
    await consumer.start();
    r.delayMs = 700;
    const { request_id } = await service.create(account, { phone_number: '+447700900701' });
    await waitFor(async () => r.forRequest(request_id).length === 1);
    expect(await pending()).toBe(1);
    await consumer.stop();
    // Answered within the wait: delivered, acknowledged, no job.
    expect(r.forRequest(request_id)[0]!.answered).toBe(200);
    expect(await pending()).toBe(0);
    expect(await jobs()).toBe(0);
    expect(await metrics.render()).toMatch(/^flashverify_webhook_direct_total\{result="done"\} 1$/m);
  });

  it('a stop that cannot wait long enough leaves the entry pending (reclaimed later), not acknowledged', async () => {
    const { r, account, consumer, service, metrics, pending, jobs } = await setUp({ settleTimeoutMs: 200 });
    await consumer.start();
    r.hang = true;
    const { request_id } = await service.create(account, { phone_number: '+447700900702' });
    await waitFor(async () => r.forRequest(request_id).length === 1);
    await consumer.stop();
    expect(await pending()).toBe(1);
    // The receiver goes away: the send fails and is handed to a retry job (before the test's keys are deleted).
    await r.stop();
    await waitFor(async () => /^flashverify_webhook_direct_total\{result="retry"\} 1$/m.test(await metrics.render()) && (await jobs()) === 1);
  });

  it('a webhooks process killed mid-send: its entry is reclaimed and the webhook sent by the next process, nothing lost', { timeout: 60_000 }, async () => {
    const r = (receiver = new Receiver());
    const url = await r.start();
    const c = (cluster = await engineCluster({
      webhooks: { allowPrivate: true, inWorkers: false, backoffMs: 100, orderPollMs: 50, timeoutMs: 2000, direct: true },
      events: { claimIdleMs: 3000 },
      fraud: { testNumbers: [{ number: '+447700900555', code: '1234' }] },
    }));
    await c.start('all');
    const a = await c.account();
    r.secret = a.api_secret;
    await new AccountStore(c.redis, c.keys, c.sealer, { allowPrivateWebhooks: true }).setWebhook(a.account_id, url);
    const first = await c.start('webhooks');
    r.hang = true;
    const created = await http(`${c.httpUrl}/v1/verify`, { auth: a.auth, body: { phone_number: '+447700900555' } });
    expect(created.status).toBe(201);
    const id = String(created.body.request_id);
    // Its `sent` webhook is in flight from the consumer itself: the receiver has it, no job exists for it.
    const hung = await waitFor(async () => r.forRequest(id)[0]);
    expect(hung.json.event).toBe('verification.sent');
    const queue = new Queue<WebhookJobData>(WEBHOOK_QUEUE, { connection: c.redis, prefix: c.keys.bullPrefix() });
    closers.push(() => queue.close());
    expect(await queue.getJob(String(hung.headers['x-flashverify-event-id']))).toBeUndefined();

    // Reclaimed after events.claimIdleMs and sent by the new process, answered 200 once. (Its `delivered`, queued
    // behind it by the dead process, is a job like any other: BullMQ takes it back after the dead worker's lock.)
    const sent = await sentAfterWebhooksKill(c, first, r, id, 15_000);
    expect(sent.filter((x) => x.answered === 200)).toHaveLength(1);
    expect(sent.map((x) => x.headers['x-flashverify-event-id'])).toEqual([
      hung.headers['x-flashverify-event-id'],
      hung.headers['x-flashverify-event-id'],
    ]);
  });

  it('is off, with a warning, when a webhook could outlast events.claimIdleMs; every webhook then goes through the queue', async () => {
    const engine = (t = await startTestEngine(testConfig({ webhooks: { allowPrivate: true, timeoutMs: 5000, direct: true }, events: { claimIdleMs: 5500 }, accounts: { fieldCacheMs: 0 } }), 'all'));
    expect(engine.logs.some((l) => l.includes('webhooks.direct is off: webhooks.timeoutMs must be at least 1000 ms below events.claimIdleMs'))).toBe(true);
    const r = (receiver = new Receiver());
    const url = await r.start();
    const account = await engine.account();
    r.secret = account.api_secret;
    await new AccountStore(engine.redis, engine.keys, engine.sealer, { allowPrivateWebhooks: true }).setWebhook(account.account_id, url);
    const service = new VerificationService(engine.redis, engine.keys, engine.sealer, engine.config, { enqueue: async () => undefined }, silent, new Set<Method>(['flash_call']));
    const { request_id } = await service.create(account, { phone_number: '+447700900703' });
    const got = await waitFor(async () => r.forRequest(request_id)[0]);
    const queue = new Queue<WebhookJobData>(WEBHOOK_QUEUE, { connection: engine.redis, prefix: engine.keys.bullPrefix() });
    closers.push(() => queue.close());
    expect(await queue.getJob(String(got.headers['x-flashverify-event-id']))).toBeDefined();
  });
});
