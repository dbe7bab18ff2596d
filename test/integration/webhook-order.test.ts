import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import { EventPublisher } from '../../src/events/event-publisher.js';
import type { StreamEntry } from '../../src/events/group-consumer.js';
import { StatusConsumer } from '../../src/events/status-consumer.js';
import { WebhookConsumer } from '../../src/events/webhook-consumer.js';
import { WEBHOOK_QUEUE, WebhookQueue, orderMember, type WebhookJobData } from '../../src/events/webhook-queue.js';
import { describeGivenUp, givenUpWebhooks, replayGivenUp } from '../../src/events/webhook-replay.js';
import { Metrics } from '../../src/metrics/metrics.js';
import { scripts } from '../../src/store/scripts.js';
import { utcDay, type Method } from '../../src/verification/types.js';
import { VerificationService } from '../../src/verification/verification-service.js';
import { startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { Receiver } from '../helpers/webhook-receiver.js';
import { webhookProcessor } from '../helpers/webhook-worker.js';

/** The production consumer, driven by hand: the test decides which consumer reads and handles which entry, when. */
class HandDrivenConsumer extends WebhookConsumer {
  async handleEntry(entry: StreamEntry): Promise<void> {
    const unsettled = await this.handle(entry);
    await unsettled?.settled;
  }
}

/** The production status consumer, one entry at a time. */
class HandDrivenStatus extends StatusConsumer {
  apply(entry: StreamEntry): Promise<void> {
    return this.handle(entry);
  }
}

const silent = pino({ level: 'silent' });

/** XREADGROUP as consumer `name` of `group`: what that consumer would get next. */
async function readAs(t: TestEngine, group: string, name: string, count: number): Promise<StreamEntry[]> {
  const res = (await t.redis.xreadgroup('GROUP', group, name, 'COUNT', count, 'STREAMS', t.keys.events(), '>')) as
    | [string, [string, string[]][]][]
    | null;
  return (res?.[0]?.[1] ?? []).map(([id, flat]) => {
    const fields: Record<string, string> = {};
    for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
    return { id, fields };
  });
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The webhook pipeline with its stream reads in the test's hands (api role: no consumer of its own), a real
 * BullMQ worker running the production processor, and a real HTTP receiver on loopback.
 */
describe('webhook order across redelivered, concurrently read, unread and skipped stream entries', () => {
  let t: TestEngine;
  let receiver: Receiver;
  let account: Awaited<ReturnType<TestEngine['account']>>;
  let service: VerificationService;
  let publisher: EventPublisher;
  let queue: WebhookQueue;
  let worker: Worker<WebhookJobData>;
  let startWorker: () => void;
  let consumer: HandDrivenConsumer;
  let consumerRedis: Redis;
  let workerRedis: Redis;
  let group: string;
  let hookUrl: string;
  const metrics = new Metrics({ defaultMetrics: false });
  /** The processor's warnings (JSON lines). */
  const warnings: string[] = [];
  /** How long a later event waits for an earlier one no consumer has handled (webhooks.orderMaxWaitMs). */
  const MAX_WAIT_MS = 1500;

  beforeAll(async () => {
    t = await startTestEngine(
      testConfig({ webhooks: { allowPrivate: true, attempts: 3, backoffMs: 100, orderPollMs: 50, orderMaxWaitMs: MAX_WAIT_MS }, accounts: { fieldCacheMs: 0 } }),
      'api',
    );
    group = t.config.events.webhookGroup;
    receiver = new Receiver();
    hookUrl = await receiver.start();
    account = await t.account();
    await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(account.account_id, hookUrl);
    service = new VerificationService(t.redis, t.keys, t.sealer, t.config, { enqueue: async () => undefined }, silent, new Set<Method>(['flash_call']));
    publisher = new EventPublisher(t.redis, t.keys, 1000);
    workerRedis = new Redis(t.config.redis.url, { maxRetriesPerRequest: null });
    queue = new WebhookQueue(workerRedis, t.keys.bullPrefix(), t.config.webhooks);
    const processor = webhookProcessor(t, { metrics, logger: pino({ level: 'warn' }, { write: (line: string) => void warnings.push(line) }) });
    // Wired as main.ts wires it; a stalled job fails at once, looked for every 300 ms (the stalled-job test).
    startWorker = () => {
      worker = new Worker<WebhookJobData>(WEBHOOK_QUEUE, (job, token) => processor.process(job, token), {
        connection: workerRedis,
        prefix: t.keys.bullPrefix(),
        concurrency: 5,
        maxStalledCount: 0,
        stalledInterval: 300,
      });
      worker.on('failed', (job) => void processor.failed(job));
    };
    startWorker();
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
  const read = (name: string, count: number): Promise<StreamEntry[]> => readAs(t, group, name, count);

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

  it('a later event waits for an earlier one that another consumer has read but not handled yet', async () => {
    const { request_id: id } = await service.create(account, { phone_number: '+447700900210' });
    // Consumer "slow" reads `sent` and holds it, unhandled (a slow handler, or one that threw or died).
    const sent = await read('slow', 10);
    expect(sent.map((e) => e.fields.event)).toEqual(['verification.sent']);
    await publisher.publish({ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'delivered', detail: {} });
    // Consumer "fast" reads and handles `delivered` meanwhile.
    const delivered = await read('fast', 10);
    expect(delivered.map((e) => e.fields.event)).toEqual(['verification.delivered']);
    await consumer.handleEntry(delivered[0]!);
    await ack(delivered);
    // Its job has run (and, since this fix, stepped back to wait): before, `delivered` went out at once, first.
    await waitFor(async () => ['delayed', 'completed'].includes(await queue.queue.getJobState(delivered[0]!.id)), 3000);
    await sleep(300);
    expect(receiver.events(id)).toEqual([]);
    await consumer.handleEntry(sent[0]!);
    await ack(sent);
    // `delivered` re-checks at doubling intervals from orderPollMs: room for a loaded machine.
    await waitFor(async () => receiver.events(id).length === 2, 15_000);
    expect(receiver.events(id)).toEqual(['verification.sent', 'verification.delivered']);
  });

  it('a second failed of a failed request (a worker stopped past its lock reporting the call another worker failed) is not sent: one end, one event id', async () => {
    const { request_id: id } = await service.create(account, { phone_number: '+447700900204' });
    const t0 = Date.now();
    await publisher.publish({ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'failed', timestamp: t0, detail: { reason: 'interrupted' } });
    // As the status consumer applies it: the record failed at that event's time.
    await t.redis.hset(t.keys.verification(id), { status: 'failed', at_failed: String(t0), failure_reason: 'interrupted' });
    // The stopped worker wakes up and reports its call's end.
    const late = await publisher.publish({ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'failed', timestamp: t0 + 20_000, detail: { reason: 'no_ringing' } });
    await handleNew();
    await waitFor(async () => (await queue.queue.getJobState(late)) === 'completed', 10_000);
    await waitFor(async () => receiver.events(id).length === 2, 10_000);
    await sleep(200);
    expect(receiver.events(id)).toEqual(['verification.sent', 'verification.failed']);
  });

  it('a `sent` in retry still goes out before a fast `failed` stamped by a worker whose clock is behind the api\'s: stream order, not the processes\' clocks', async () => {
    const { request_id: id } = await service.create(account, { phone_number: '+447700900215' });
    let refused = false;
    receiver.answer = (json) => (json.request_id === id && json.event === 'verification.sent' && !refused ? ((refused = true), 500) : undefined);
    try {
      await handleNew();
      await waitFor(async () => refused);
      const createdAt = Number(await t.redis.hget(t.keys.verification(id), 'created_at'));
      // A busy 40 ms after the create, reported by a worker 300 ms behind: its timestamp is before the `sent`'s.
      const failedId = await publisher.publish({ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'failed', timestamp: createdAt - 260, detail: { reason: 'busy' } });
      // The status consumer (production code) applies it: the request is failed.
      const entry = (await t.redis.xrange(t.keys.events(), failedId, failedId)).map(([eid, flat]) => {
        const fields: Record<string, string> = {};
        for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
        return { id: eid, fields };
      })[0]!;
      await new HandDrivenStatus(t.redis, t.keys, 'status', 'test', silent, metrics).apply(entry);
      expect(await t.redis.hget(t.keys.verification(id), 'status')).toBe('failed');
      await handleNew();
      await waitFor(async () => receiver.events(id).length === 2, 10_000);
      expect(receiver.events(id)).toEqual(['verification.sent', 'verification.failed']);
    } finally {
      receiver.answer = undefined;
    }
  });

  it('sends no delivery receipt after verified and no late failure after expired', async () => {
    const skippedBefore = Number((await metrics.registry.getSingleMetricAsString('flashverify_webhook_skipped_total')).match(/ (\d+)$/m)?.[1] ?? 0);
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
    expect(await metrics.registry.getSingleMetricAsString('flashverify_webhook_skipped_total')).toMatch(new RegExp(` ${skippedBefore + 2}$`));
  });

  /** The request's order set: member → score. */
  async function orderOf(requestId: string): Promise<Record<string, number>> {
    const flat = await t.redis.zrangebyscore(t.keys.webhookOrder(requestId), '-inf', '+inf', 'WITHSCORES');
    const out: Record<string, number> = {};
    for (let i = 0; i + 1 < flat.length; i += 2) out[flat[i]!] = Number(flat[i + 1]);
    return out;
  }

  /** The stream ids of a request's events, oldest first. */
  async function eventIds(requestId: string): Promise<string[]> {
    return (await t.redis.xrange(t.keys.events(), '-', '+')).filter(([, f]) => f[f.indexOf('request_id') + 1] === requestId).map(([id]) => id);
  }

  const warned = (requestId: string) => warnings.filter((w) => w.includes(requestId));
  /** The processor's `webhook given up` errors of a request: which event, and why. */
  const givenUp = (requestId: string) =>
    warned(requestId)
      .map((w) => JSON.parse(w) as Record<string, unknown>)
      .filter((l) => l.msg === 'webhook given up')
      .map((l) => [l.event_id, l.err]);

  it('a later event waits for an earlier one whose consumer died, until another consumer reclaims it', async () => {
    const { request_id: id } = await service.create(account, { phone_number: '+447700900211' });
    // Consumer "dead" reads `sent` and dies before handling it: the entry stays pending on it.
    expect((await read('dead', 10)).map((e) => e.fields.event)).toEqual(['verification.sent']);
    await publisher.publish({ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'delivered', detail: {} });
    // A running consumer reads `delivered`, and takes `sent` over once it has been idle 300 ms (XAUTOCLAIM).
    const live = new WebhookConsumer(new Redis(t.config.redis.url), t.keys, group, 'live', silent, queue, { fieldCacheMs: 0, claimIdleMs: 300, blockMs: 100 });
    await live.start();
    try {
      await waitFor(async () => receiver.events(id).length === 2, 15_000);
    } finally {
      await live.stop();
    }
    expect(receiver.events(id)).toEqual(['verification.sent', 'verification.delivered']);
    expect(warned(id)).toEqual([]);
  });

  it('a given-up webhook is marked done, and the later events of its request follow', async () => {
    const { request_id: id } = await service.create(account, { phone_number: '+447700900212' });
    receiver.answer = (b) => (b.request_id === id && b.event === 'verification.sent' ? 500 : undefined);
    try {
      await publisher.publish({ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'delivered', detail: {} });
      await handleNew();
      // `sent` fails 3 times (webhooks.attempts) and is given up; `delivered` waited for it, then goes. Its re-checks
      // double from orderPollMs (50 ms): on a loaded machine the one after the give-up can come several seconds later.
      await waitFor(async () => receiver.events(id).length === 1, 15_000);
    } finally {
      receiver.answer = undefined;
    }
    const [sentId, deliveredId] = await eventIds(id);
    expect(receiver.events(id)).toEqual(['verification.delivered']);
    expect(await queue.queue.getJobState(sentId!)).toBe('failed');
    // The receiver records a request before it answers, and the processor marks the event done once the answer is
    // in: a moment later.
    await waitFor(async () => (await orderOf(id))[orderMember(deliveredId!)] === 1, 5000);
    expect(await orderOf(id)).toEqual({ [orderMember(sentId!)]: 1, [orderMember(deliveredId!)]: 1 });
    // Logged once, by the attempt that gave it up (the worker's `failed` listener finds it done already).
    expect(givenUp(id)).toEqual([[sentId, 'receiver answered HTTP 500']]);
  });

  it('a webhook job BullMQ fails as stalled (its worker died mid-delivery) is marked done, and the later events follow', async () => {
    const { request_id: id } = await service.create(account, { phone_number: '+447700900221' });
    // The test's worker stops; a worker takes `sent` and dies holding it: its lock lapses after 500 ms.
    await worker.close();
    const doomedRedis = new Redis(t.config.redis.url, { maxRetriesPerRequest: null });
    const doomed = new Worker<WebhookJobData>(WEBHOOK_QUEUE, () => new Promise<void>(() => undefined), {
      connection: doomedRedis,
      prefix: t.keys.bullPrefix(),
      lockDuration: 500,
      // As the test's worker: a worker's stalled check holds the queue's `stalled-check` key for its stalledInterval,
      // and BullMQ's default (30 s) kept the other worker from checking: the job stayed active (a flaky failure).
      stalledInterval: 300,
    });
    try {
      await handleNew();
      const [sentId] = await eventIds(id);
      await waitFor(async () => (await queue.queue.getJobState(sentId!)) === 'active', 3000);
      await doomed.close(true);
      await publisher.publish({ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'delivered', detail: {} });
      await handleNew();
      startWorker();
      // The stalled `sent` fails without being run (maxStalledCount 0); `delivered` waited for it (queued), then goes.
      // Its re-checks double from orderPollMs: under load the one after the stalled check can come seconds later.
      await waitFor(async () => receiver.events(id).length === 1, 15_000);
      expect(receiver.events(id)).toEqual(['verification.delivered']);
      const sent = await queue.queue.getJob(sentId!);
      expect([await sent!.getState(), sent!.failedReason]).toEqual(['failed', 'job stalled more than allowable limit']);
      expect((await orderOf(id))[orderMember(sentId!)]).toBe(1);
      // Given up like one whose attempts failed: logged at error, and listed for a replay (`flashverify webhook failed`).
      expect(givenUp(id)).toEqual([[sentId, 'job stalled more than allowable limit']]);
      const listed = await givenUpWebhooks(queue.queue, { accountId: account.account_id, requestId: id });
      expect(listed.map((j) => describeGivenUp(j))).toMatchObject([{ event: 'verification.sent', event_id: sentId, last_error: 'job stalled more than allowable limit' }]);
    } finally {
      if (!worker.isRunning()) startWorker();
      doomedRedis.disconnect();
    }
  });

  it('two given-up events of one request replayed together arrive in their order, even when the later one is replayed first and the order set had expired', async () => {
    for (const expired of [false, true]) {
      // An account of its own: its failures here must not open the others' breaker, nor theirs this one's.
      const own = await t.account();
      await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(own.account_id, hookUrl);
      const { request_id: id } = await service.create(own, { phone_number: expired ? '+447700900223' : '+447700900222' });
      receiver.answer = (b) => (b.request_id === id ? 500 : undefined);
      try {
        // Each given up in turn (the later one not held by the earlier one meanwhile).
        await handleNew();
        const [sentId] = await eventIds(id);
        await waitFor(async () => (await queue.queue.getJobState(sentId!)) === 'failed', 15_000);
        // Its failures in a row would open the account's breaker: the next deliveries would wait out its cool-off.
        await t.redis.del(t.keys.webhookBreaker(own.account_id));
        await publisher.publish({ request_id: id, account_id: own.account_id, method: 'flash_call', status: 'delivered', detail: {} });
        await handleNew();
        const [, deliveredId] = await eventIds(id);
        await waitFor(async () => (await queue.queue.getJobState(deliveredId!)) === 'failed', 15_000);
      } finally {
        receiver.answer = undefined;
      }
      const [sentId, deliveredId] = await eventIds(id);
      await waitFor(async () => Object.values(await orderOf(id)).every((score) => score === 1), 5000);
      if (expired) await t.redis.del(t.keys.webhookOrder(id));
      await t.redis.del(t.keys.webhookBreaker(own.account_id));
      const given = await givenUpWebhooks(queue.queue, { accountId: own.account_id, requestId: id });
      expect(given.map((j) => j.data.event)).toEqual(['verification.sent', 'verification.delivered']);
      const before = receiver.events(id).length;
      // The later one first: it must wait for the earlier one, made pending again with it.
      await replayGivenUp(t.redis, t.keys, [...given].reverse());
      await waitFor(async () => receiver.events(id).length === before + 2, 15_000);
      await waitFor(async () => (await Promise.all([sentId!, deliveredId!].map((e) => queue.queue.getJobState(e)))).every((s) => s === 'completed'), 5000);
      expect(receiver.events(id).slice(before)).toEqual(['verification.sent', 'verification.delivered']);
      expect(await orderOf(id)).toEqual({ [orderMember(sentId!)]: 1, [orderMember(deliveredId!)]: 1 });
      expect(await t.redis.ttl(t.keys.webhookOrder(id))).toBeGreaterThanOrEqual(expired ? 24 * 3600 - 60 : 24 * 3600);
    }
  });

  it('an account without a webhook URL: none of its events is filed, queued or held, and no order set is made', async () => {
    const quiet = await t.account();
    const { request_id: id } = await service.create(quiet, { phone_number: '+447700900213' });
    await publisher.publish({ request_id: id, account_id: quiet.account_id, method: 'flash_call', status: 'delivered', detail: {} });
    await service.cancel(quiet, id);
    const ids = await eventIds(id);
    expect(ids).toHaveLength(3);
    // No webhook could wait on them: the request costs no order-set command and no memory.
    expect(await t.redis.hget(t.keys.verification(id), 'whq_until')).toBeNull();
    await handleNew();
    expect(await t.redis.exists(t.keys.webhookOrder(id))).toBe(0);
    expect(await Promise.all(ids.map((e) => queue.queue.getJob(e)))).toEqual([undefined, undefined, undefined]);
  });

  it('an account with a webhook URL: its events are filed as written, and the set expires a day after the request', async () => {
    const { request_id: id } = await service.create(account, { phone_number: '+447700900217' });
    await publisher.publish({ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'delivered', detail: {} });
    // Filed by the scripts that wrote them, as written (-1): no consumer has seen them yet.
    expect(Object.values(await orderOf(id))).toEqual([-1, -1]);
    // Kept a day beyond an hour after the request's expiry (the default 600 s here), then gone.
    const ttl = await t.redis.ttl(t.keys.webhookOrder(id));
    expect(ttl).toBeGreaterThan(24 * 3600);
    expect(ttl).toBeLessThanOrEqual(24 * 3600 + 3600 + 600);
    await handleNew();
    await waitFor(async () => receiver.events(id).length === 2, 15_000);
  });

  it('an account that sets its URL mid-request gets the later events at once, not held by the earlier ones', async () => {
    const late = await t.account();
    const { request_id: id } = await service.create(late, { phone_number: '+447700900214' });
    await handleNew();
    await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(late.account_id, hookUrl);
    await publisher.publish({ request_id: id, account_id: late.account_id, method: 'flash_call', status: 'delivered', detail: {} });
    await handleNew();
    await waitFor(async () => receiver.events(id).length === 1, MAX_WAIT_MS - 500);
    expect(receiver.events(id)).toEqual(['verification.delivered']);
    expect(warned(id)).toEqual([]);
  });

  it('a failed workflow step with steps left (no webhook) does not hold back the next step\'s events', async () => {
    const { request_id: id } = await service.create(account, { phone_number: '+447700900215' });
    await publisher.publish({ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'failed', step: 0, steps: 2, detail: { reason: 'busy' } });
    await publisher.publish({ request_id: id, account_id: account.account_id, method: 'sms', status: 'delivered', step: 1, steps: 2, detail: {} });
    await handleNew();
    await waitFor(async () => receiver.events(id).length === 2, MAX_WAIT_MS - 500);
    expect(receiver.events(id)).toEqual(['verification.sent', 'verification.delivered']);
    expect(warned(id)).toEqual([]);
  });

  it('an event trimmed from the stream before any consumer read it holds the later ones at most orderMaxWaitMs, then is given up', async () => {
    const { request_id: id } = await service.create(account, { phone_number: '+447700900216' });
    // events.maxLen trims it before the webhooks group reads it: no consumer will ever handle `sent`.
    await t.redis.xtrim(t.keys.events(), 'MAXLEN', 0);
    await publisher.publish({ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'delivered', detail: {} });
    await handleNew();
    await sleep(MAX_WAIT_MS / 2);
    expect(receiver.events(id)).toEqual([]);
    await waitFor(async () => receiver.events(id).length === 1, MAX_WAIT_MS + 3000);
    expect(warned(id)).toHaveLength(1);
    expect(JSON.parse(warned(id)[0]!)).toMatchObject({ event: 'verification.delivered', max_wait_ms: MAX_WAIT_MS, msg: expect.stringMatching(/never handled/) });
    // Given up waiting for: the request's next event goes at once.
    await publisher.publish({ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'failed', detail: { reason: 'busy' } });
    await handleNew();
    await waitFor(async () => receiver.events(id).length === 2, MAX_WAIT_MS - 500);
    expect(receiver.events(id)).toEqual(['verification.delivered', 'verification.failed']);
    expect(warned(id)).toHaveLength(1);
  });

  it('the wait for an unhandled earlier event is measured on Redis\'s clock, the one its stream id was made on, whatever the worker\'s clock says', async () => {
    const { request_id: id } = await service.create(account, { phone_number: '+447700900221' });
    const order = t.keys.webhookOrder(id);
    const [secs, micros] = await t.redis.time();
    const redisNow = Number(secs) * 1000 + Math.floor(Number(micros) / 1000);
    const member = (ms: number, seq = 0) => orderMember(`${ms}-${seq}`);
    const prepare = (later: string, workerNow: number) =>
      scripts.prepareWebhook.run(
        t.redis,
        [order, t.keys.account(account.account_id), t.keys.webhookBreaker(account.account_id), t.keys.verification(id)],
        [later, workerNow, 10_000, MAX_WAIT_MS, 'phone_enc', 'status'],
      ) as Promise<(string | null)[]>;
    await t.redis.del(order);
    // An earlier event written just now (Redis's clock), not handled: held, even by a worker an hour ahead.
    await t.redis.zadd(order, -1, member(redisNow - 10));
    expect(await prepare(member(redisNow, 1), Date.now() + 3600_000)).toEqual(['held']);
    // Written longer ago than orderMaxWaitMs (Redis's clock): given up waiting for, even by a worker an hour behind.
    await t.redis.del(order);
    const old = member(redisNow - MAX_WAIT_MS - 1000);
    await t.redis.zadd(order, -1, old);
    const r = await prepare(member(redisNow, 1), Date.now() - 3600_000);
    expect(r[0]).toBe('closed');
    expect(r[1]).toBe(hookUrl);
    expect(r.slice(-1)).toEqual([old]);
    expect(await t.redis.zscore(order, old)).toBe('1');
    // Queued (its job exists): held however old.
    await t.redis.zadd(order, 0, old);
    expect(await prepare(member(redisNow, 1), Date.now())).toEqual(['held']);
    await t.redis.del(order);
  });

  it('every script that writes a webhook\'s event files it in the request\'s order set, in the same step', async () => {
    const sms = new VerificationService(t.redis, t.keys, t.sealer, t.config, { enqueue: async () => undefined }, silent, new Set<Method>(['flash_call', 'sms']));
    // createVerification-9 (sent), recordCheck-6 (verified), settleSms-4 (an SMS receipt), recordAttemptEvent-3 (publish).
    const a = await sms.create(account, { phone_number: '+447700900217', method: 'sms' });
    await sms.check(account, { request_id: a.request_id, code: t.sealer.open((await t.redis.hget(t.keys.verification(a.request_id), 'code_enc'))!, `code:${a.request_id}`) });
    const receipt = { request_id: a.request_id, account_id: account.account_id, method: 'sms' as const, status: 'delivered' as const, detail: {} };
    expect(await scripts.settleSms.run(t.redis, [t.keys.verification(a.request_id), t.keys.events(), t.keys.smsEarlyReceipt('s', 'm'), t.keys.webhookOrder(a.request_id)], ['', 'DELIVRD', '', ...publisher.streamArgs(receipt)])).toBe('published');
    await publisher.publish({ ...receipt, status: 'failed', detail: { reason: 'late' } });
    // cancelVerification-6 (canceled).
    const b = await service.create(account, { phone_number: '+447700900218' });
    await service.cancel(account, b.request_id);
    // expireVerification-7 (expired), as the sweeper runs it once the request's time is up.
    const c = await service.create(account, { phone_number: '+447700900219' });
    const day = utcDay(Date.now());
    const cKeys = [t.keys.verification(c.request_id), t.keys.expiries(), t.keys.events(), t.keys.account(account.account_id), t.keys.usage(account.account_id, day), t.keys.conversion(day), t.keys.webhookOrder(c.request_id)];
    expect(((await scripts.expireVerification.run(t.redis, cKeys, [c.request_id, Date.now() + 3600_000, 1000])) as string[])[0]).toBe('expired');
    // advanceWorkflow-8 (failed: the next step refused).
    const d = await service.create(account, { phone_number: '+447700900220' });
    await t.redis.hset(t.keys.verification(d.request_id), 'wf_step', '0', 'wf_steps', '2');
    const dKeys = [t.keys.verification(d.request_id), t.keys.account(account.account_id), t.keys.usage(account.account_id, day), t.keys.events(), t.keys.usage(account.account_id, day), t.keys.conversion(day), t.keys.webhookOrder(d.request_id), t.keys.conversion(day)];
    expect(await scripts.advanceWorkflow.run(t.redis, dKeys, [0, Date.now(), 'sms', 0, 'mac', 'enc', 6, 'failed', 1000, 3600, 'rate_limited', 1000])).toEqual(['rate_limited', 1]);

    const expected = { [a.request_id]: 4, [b.request_id]: 2, [c.request_id]: 2, [d.request_id]: 2 };
    for (const [id, n] of Object.entries(expected)) {
      const ids = await eventIds(id);
      expect(ids).toHaveLength(n);
      expect(await orderOf(id)).toEqual(Object.fromEntries(ids.map((e) => [orderMember(e), -1])));
      expect(await t.redis.ttl(t.keys.webhookOrder(id))).toBeGreaterThan(24 * 3600);
    }
    // Read and acknowledged unhandled: no later test's consumer sends their webhooks.
    await ack(await read('filing', 100));
  });
});

describe('a webhook job held behind an earlier event of its request', () => {
  let t: TestEngine | undefined;
  let receiver: Receiver | undefined;
  let worker: Worker<WebhookJobData> | undefined;
  let queue: WebhookQueue | undefined;
  const redises: Redis[] = [];
  afterAll(async () => {
    await worker?.close();
    await queue?.close();
    for (const r of redises) r.disconnect();
    await t?.stop();
    await receiver?.stop();
  });

  it('runs as soon as the earlier one is done, not at its next look (webhooks.orderPollMs)', async () => {
    // A look every 8 s: the held job would wait that long without the wake-up.
    t = await startTestEngine(testConfig({ webhooks: { allowPrivate: true, orderPollMs: 8000 }, accounts: { fieldCacheMs: 0 } }), 'api');
    const group = t.config.events.webhookGroup;
    receiver = new Receiver();
    const url = await receiver.start();
    const account = await t.account();
    await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(account.account_id, url);
    const workerRedis = new Redis(t.config.redis.url, { maxRetriesPerRequest: null });
    const consumerRedis = new Redis(t.config.redis.url);
    redises.push(workerRedis, consumerRedis);
    const q = (queue = new WebhookQueue(workerRedis, t.keys.bullPrefix(), t.config.webhooks));
    // Wired as main.ts wires it: the processor wakes held jobs through the queue.
    const processor = webhookProcessor(t, { metrics: new Metrics({ defaultMetrics: false }), logger: silent, heldJobs: q });
    worker = new Worker<WebhookJobData>(WEBHOOK_QUEUE, (job, token) => processor.process(job, token), { connection: workerRedis, prefix: t.keys.bullPrefix(), concurrency: 5 });
    const consumer = new HandDrivenConsumer(consumerRedis, t.keys, group, 'test', silent, q, { fieldCacheMs: 0 });
    const service = new VerificationService(t.redis, t.keys, t.sealer, t.config, { enqueue: async () => undefined }, silent, new Set<Method>(['flash_call']));
    const engine = t;
    const read = (name: string): Promise<StreamEntry[]> => readAs(engine, group, name, 10);

    const { request_id: id } = await service.create(account, { phone_number: '+447700900230' });
    // `sent` read by one consumer and not handled yet; `delivered` handled by another meanwhile: its job steps back.
    const [sent] = await read('slow');
    await new EventPublisher(t.redis, t.keys, 1000).publish({ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'delivered', detail: {} });
    const [delivered] = await read('fast');
    await consumer.handleEntry(delivered!);
    await waitFor(async () => (await q.queue.getJobState(delivered!.id)) === 'delayed', 3000);
    // Now `sent` is handled: once delivered, `delivered` goes at once.
    await consumer.handleEntry(sent!);
    // Within 4 s of it (a loaded machine's room), where its next look would be 8 s after it stepped back.
    await waitFor(async () => receiver!.events(id).length === 2, 4000);
    expect(receiver.events(id)).toEqual(['verification.sent', 'verification.delivered']);
    await t.redis.xack(t.keys.events(), group, sent!.id, delivered!.id);
  });
});
