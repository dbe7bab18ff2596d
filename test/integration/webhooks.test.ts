import { Queue } from 'bullmq';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import { EventPublisher } from '../../src/events/event-publisher.js';
import { WEBHOOK_QUEUE, type WebhookJobData } from '../../src/events/webhook-queue.js';
import { WebhookTargetError } from '../../src/events/webhook-target.js';
import type { Account } from '../../src/accounts/account-store.js';
import type { Method } from '../../src/verification/types.js';
import { VerificationService } from '../../src/verification/verification-service.js';
import { http, readEvents, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { Receiver } from '../helpers/webhook-receiver.js';
import { startWebhookWorker } from '../helpers/webhook-worker.js';

const noQueue = { enqueue: async () => undefined };

describe('signed webhooks', () => {
  let t: TestEngine;
  let receiver: Receiver;
  let url: string;
  let account: Account & { api_secret: string; auth: string };
  let service: VerificationService;
  let publisher: EventPublisher;

  beforeAll(async () => {
    t = await startTestEngine(
      testConfig({
        api: { defaultRateLimitPerSecond: 1000 },
        // Sent by the consumer that reads each event (webhooks.direct); a job only to wait or retry.
        webhooks: { allowPrivate: true, attempts: 4, backoffMs: 100, orderPollMs: 50, direct: true },
        verification: { expirySweepMs: 100 },
      }),
      'all',
    );
    receiver = new Receiver();
    url = await receiver.start();
    account = await t.account();
    receiver.secret = account.api_secret;
    await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(account.account_id, url);
    // Created through the domain service with no delivery queue: the events are exactly the ones the test makes.
    service = new VerificationService(t.redis, t.keys, t.sealer, t.config, noQueue, pino({ level: 'silent' }), new Set<Method>(['flash_call']));
    publisher = new EventPublisher(t.redis, t.keys, 1000);
  });
  afterEach(() => {
    receiver.script = [];
  });
  afterAll(async () => {
    await t?.stop();
    await receiver?.stop();
  });

  it('sends sent, delivered and verified in order, signed with the API secret, with the documented payload, over one kept-alive connection', async () => {
    const created = await service.create(account, { phone_number: '+447700900100' });
    const id = created.request_id;
    await publisher.publish({ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'delivered', detail: {}, timestamp: Date.parse('2026-03-04T15:00:02.345Z') });
    await waitFor(async () => receiver.forRequest(id).length >= 2);
    const enc = await t.redis.hget(t.keys.verification(id), 'code_enc');
    const code = t.sealer.open(enc!, `code:${id}`);
    const checked = await http(`${t.url}/v1/verify/check`, { auth: account.auth, body: { request_id: id, code } });
    expect(checked.status).toBe(200);
    const got = await waitFor(async () => (receiver.forRequest(id).length >= 3 ? receiver.forRequest(id) : null));

    expect(got.map((r) => r.json.event)).toEqual(['verification.sent', 'verification.delivered', 'verification.verified']);
    // One after another (each waits for the one before): the connection of the first serves the next two.
    expect(new Set(got.map((r) => r.socket)).size).toBe(1);
    for (const r of got) {
      expect(r.signatureValid).toBe(true);
      expect(r.headers['content-type']).toBe('application/json');
      expect(r.headers['x-flashverify-event-id']).toMatch(/^\d+-\d+$/);
      expect(Number(r.headers['x-flashverify-timestamp'])).toBeGreaterThan(1_700_000_000);
      expect(Object.keys(r.json).sort()).toEqual(['event', 'method', 'phone_number', 'request_id', 'status', 'timestamp']);
      expect(r.json).toMatchObject({ request_id: id, phone_number: '+447700900100', method: 'flash_call' });
      expect(r.json.timestamp).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      // Never the code, never the secret.
      expect(r.body.toString()).not.toContain(account.api_secret);
    }
    expect(got[1]!.json).toMatchObject({ event: 'verification.delivered', status: 'delivered', timestamp: '2026-03-04T15:00:02Z' });
    expect(got[2]!.json.status).toBe('verified');

    // The first went out from the consumer that read its event, at once: no job was made for it.
    const queue = new Queue(WEBHOOK_QUEUE, { connection: t.redis, prefix: t.keys.bullPrefix() });
    expect(await queue.getJob(String(got[0]!.headers['x-flashverify-event-id']))).toBeUndefined();
    await queue.close();
    for (const line of t.logs) expect(line).not.toContain(account.api_secret);
  });

  it('retries a receiver that fails twice with exponential back-off, and keeps later events behind it', async () => {
    receiver.script = [500, 500];
    const created = await service.create(account, { phone_number: '+447700900101' });
    const id = created.request_id;
    await publisher.publish({ request_id: id, account_id: account.account_id, method: 'flash_call', status: 'delivered', detail: {} });
    const got = await waitFor(async () => {
      const r = receiver.forRequest(id).filter((x) => x.answered === 200);
      return r.length >= 2 ? receiver.forRequest(id) : null;
    });
    expect(got.map((r) => [r.json.event, r.answered])).toEqual([
      ['verification.sent', 500],
      ['verification.sent', 500],
      ['verification.sent', 200],
      ['verification.delivered', 200],
    ]);
    // The same event each time: same id, same body, valid signature.
    expect(new Set(got.slice(0, 3).map((r) => r.headers['x-flashverify-event-id'])).size).toBe(1);
    expect(got.every((r) => r.signatureValid)).toBe(true);
    // Tried at once by the consumer, then by a job: 3 attempts in all. The job's data carries neither the number nor the code.
    const queue = new Queue(WEBHOOK_QUEUE, { connection: t.redis, prefix: t.keys.bullPrefix() });
    const job = await queue.getJob(String(got[0]!.headers['x-flashverify-event-id']));
    await queue.close();
    expect(job?.data).toBeDefined();
    expect(job!.attemptsMade + (job!.data.attempts_before ?? 0)).toBe(3);
    expect(JSON.stringify(job!.data)).not.toContain('447700900101');
    expect(Object.keys(job!.data).sort()).toEqual(['account_id', 'attempts_before', 'event', 'event_id', 'method', 'request_id', 'status', 'timestamp', 'tried_at']);
  });

  it('treats a redirect as a failure: it is not followed, the event is retried', async () => {
    receiver.script = [302];
    const created = await service.create(account, { phone_number: '+447700900106' });
    const got = await waitFor(async () => (receiver.forRequest(created.request_id).length >= 2 ? receiver.forRequest(created.request_id) : null));
    expect(got.map((r) => [r.json.event, r.answered])).toEqual([
      ['verification.sent', 302],
      ['verification.sent', 200],
    ]);
  });

  it('sends verification.expired when a request expires unpolled', async () => {
    const created = await service.create(account, { phone_number: '+447700900102', expiry_seconds: 1 });
    const id = created.request_id;
    const got = await waitFor(async () => receiver.forRequest(id).find((r) => r.json.event === 'verification.expired'), 8000);
    expect(got.json).toMatchObject({ status: 'expired', request_id: id });
    expect(await t.redis.hget(t.keys.verification(id), 'status')).toBe('expired');
  });

  it('sends nothing for accounts without a webhook URL', async () => {
    const other = await t.account();
    const created = await service.create(other, { phone_number: '+447700900103' });
    await service.create(account, { phone_number: '+447700900104' }).then(async (c) => waitFor(async () => receiver.forRequest(c.request_id).length > 0));
    expect(receiver.forRequest(created.request_id)).toEqual([]);
  });

  it('signs with the new API secret from the first webhook after it is regenerated (last: the account keeps it)', async () => {
    const before = await service.create(account, { phone_number: '+447700900105' });
    await waitFor(async () => receiver.forRequest(before.request_id).length > 0);
    const regenerated = await t.accounts.regenerateSecret(account.account_id);
    receiver.secret = regenerated.api_secret;
    const after = await service.create(account, { phone_number: '+447700900106' });
    const got = await waitFor(async () => receiver.forRequest(after.request_id)[0]);
    expect(got.signatureValid).toBe(true);
  });
});

describe('a receiver that closes a kept-alive connection as it is reused', () => {
  it('gets every webhook: the request goes again at once on a new connection, spending no attempt and no breaker failure', async () => {
    // One failure would open the breaker; any failed attempt would be retried after 100 ms, counted by BullMQ.
    const t = await startTestEngine(testConfig({ webhooks: { allowPrivate: true, attempts: 4, backoffMs: 100, orderPollMs: 50, breaker: { failures: 1 } } }), 'all');
    const receiver = new Receiver();
    receiver.dropReused = true;
    const queue = new Queue<WebhookJobData>(WEBHOOK_QUEUE, { connection: t.redis, prefix: t.keys.bullPrefix() });
    try {
      const a = await t.account();
      receiver.secret = a.api_secret;
      await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(a.account_id, await receiver.start());
      const service = new VerificationService(t.redis, t.keys, t.sealer, t.config, noQueue, pino({ level: 'silent' }), new Set<Method>(['flash_call']));
      const { request_id: id } = await service.create(a, { phone_number: '+447700900120' });
      await new EventPublisher(t.redis, t.keys, 1000).publish({ request_id: id, account_id: a.account_id, method: 'flash_call', status: 'delivered', detail: {} });
      await waitFor(async () => receiver.forRequest(id).length === 2);
      // `sent` opened a connection; `delivered` went on it, was reset, and went again on a new one.
      expect(receiver.dropped).toBe(1);
      expect(receiver.forRequest(id).map((r) => [r.json.event, r.answered, r.socket])).toEqual([
        ['verification.sent', 200, 0],
        ['verification.delivered', 200, 1],
      ]);
      // One attempt each (the one that succeeded): no retry job, and a job made for one that waited for `sent`
      // has no error on record; no breaker failure, nothing logged as failed.
      for (const job of await queue.getJobs(['completed', 'failed', 'delayed', 'waiting', 'active'])) {
        expect(job.attemptsMade).toBe(1);
        expect(job.data.attempts_before).toBeUndefined();
        expect(job.stacktrace).toEqual([]);
      }
      expect(await t.redis.exists(t.keys.webhookBreaker(a.account_id))).toBe(0);
      expect(t.logs.filter((l) => l.includes('webhook failed'))).toEqual([]);
    } finally {
      await queue.close();
      await t.stop();
      await receiver.stop();
    }
  });
});

describe('webhook SSRF protection', () => {
  let t: TestEngine;
  let receiver: Receiver;

  beforeAll(async () => {
    t = await startTestEngine(testConfig({ webhooks: { allowPrivate: false, attempts: 1, backoffMs: 100 } }), 'all');
    receiver = new Receiver();
  });
  afterAll(async () => {
    await t?.stop();
    await receiver?.stop();
  });

  it('refuses private, loopback and link-local webhook URLs when they are set', async () => {
    const a = await t.account();
    const store = new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: false });
    for (const bad of [
      'http://127.0.0.1:8080/hook',
      'http://localhost/hook',
      'http://[::1]/hook',
      'http://10.1.2.3/hook',
      'http://172.20.0.1/hook',
      'http://192.168.1.1/hook',
      'http://169.254.169.254/latest/meta-data',
      'http://100.64.0.1/hook',
      'http://[fd00::1]/hook',
      'http://[::ffff:127.0.0.1]/hook',
      'ftp://example.com/hook',
    ]) {
      await expect(store.setWebhook(a.account_id, bad), bad).rejects.toBeInstanceOf(WebhookTargetError);
    }
    expect((await t.accounts.get(a.account_id)).webhook_url).toBeNull();
    await expect(store.setWebhook(a.account_id, 'http://93.184.215.14/hook')).resolves.toMatchObject({ webhook_url: 'http://93.184.215.14/hook' });
  });

  it('refuses again at delivery time (a URL that became private is never called)', async () => {
    const url = await receiver.start();
    const a = await t.account();
    receiver.secret = a.api_secret;
    // As if the name had resolved publicly when set and rebinds to loopback now.
    await t.redis.hset(t.keys.account(a.account_id), 'webhook_url', url);
    const service = new VerificationService(t.redis, t.keys, t.sealer, t.config, noQueue, pino({ level: 'silent' }), new Set<Method>(['flash_call']));
    await service.create(a, { phone_number: '+447700900105' });
    const queue = new Queue(WEBHOOK_QUEUE, { connection: t.redis, prefix: t.keys.bullPrefix() });
    try {
      const failed = await waitFor(async () => (await queue.getFailed())[0]);
      expect(failed.failedReason).toMatch(/private address/);
    } finally {
      await queue.close();
    }
    expect(receiver.received).toEqual([]);
  });
});

describe('a webhook host whose resolver never answers', () => {
  it('each attempt fails as a timeout at webhooks.timeoutMs, is retried like any timeout, and frees its slot', async () => {
    const t = await startTestEngine(testConfig({ webhooks: { allowPrivate: false, timeoutMs: 400, attempts: 2, backoffMs: 100 } }), 'api');
    const asked: string[] = [];
    // One slot: a hung lookup holding it would stop every later delivery of this process.
    const w = startWebhookWorker(t, {
      concurrency: 1,
      // A resolver that takes the question and never answers (a dead DNS server behind a firewall that drops).
      resolveAll: (host) => {
        asked.push(host);
        return new Promise(() => undefined);
      },
    });
    try {
      const a = await t.account();
      // Set as if it had resolved publicly when it was set (the role has no webhook consumer: jobs are added by hand).
      await t.redis.hset(t.keys.account(a.account_id), 'webhook_url', 'https://hooks.hang.test/flashverify');
      for (const phone of ['+447700900110', '+447700900111']) await w.queueSent(a, phone);
      // Both jobs, one after the other in the one slot, use up their 2 attempts and are given up.
      for (const job of await w.failed(2)) {
        expect(job.attemptsMade).toBe(2);
        expect(job.failedReason).toBe('timeout: no DNS answer for hooks.hang.test within the delivery timeout');
      }
      // One lookup, still hung, waited for by all four attempts (single flight: webhook-host-cache.ts), each until its deadline.
      expect(asked).toEqual(['hooks.hang.test']);
      expect(await w.metric('flashverify_webhook_dns_timeouts_total')).toBe(4);
    } finally {
      await w.stop();
      await t.stop();
    }
  });
});

describe('webhooks of events written before any worker ran', () => {
  it('an api that took requests first (fresh deployment): the first worker still sends their webhooks', async () => {
    const receiver = new Receiver();
    const url = await receiver.start();
    const config = testConfig({
      webhooks: { allowPrivate: true, backoffMs: 100, orderPollMs: 50 },
      fraud: { testNumbers: [{ number: '+447700900555', code: '1234' }] },
    });
    const api = await startTestEngine(config, 'api');
    let worker: TestEngine | undefined;
    try {
      const a = await api.account();
      receiver.secret = a.api_secret;
      await new AccountStore(api.redis, api.keys, api.sealer, { allowPrivateWebhooks: true }).setWebhook(a.account_id, url);
      // A test number: sent, delivered and verified all happen in the api, with no worker anywhere yet.
      const created = await http(`${api.url}/v1/verify`, { auth: a.auth, body: { phone_number: '+447700900555' } });
      expect(created.status).toBe(201);
      const id = String(created.body.request_id);
      // (Statuses follow from events in the worker role: here only the events are written.)
      await waitFor(async () => (await readEvents(api.redis, api.keys)).some((e) => e.request_id === id && e.status === 'delivered'), 5000);
      expect((await http(`${api.url}/v1/verify/check`, { auth: a.auth, body: { request_id: id, code: '1234' } })).status).toBe(200);
      expect(receiver.received).toHaveLength(0);

      worker = await startTestEngine(config, 'worker');
      const got = await waitFor(async () => {
        const r = receiver.forRequest(id);
        return r.some((x) => x.json.event === 'verification.verified') ? r : undefined;
      }, 15_000);
      expect(got.map((r) => r.json.event)).toEqual(['verification.sent', 'verification.delivered', 'verification.verified']);
      expect(got.every((r) => r.signatureValid)).toBe(true);
    } finally {
      await worker?.engine.stop();
      await worker?.redis.quit();
      await api.stop();
      await receiver.stop();
    }
  });
});
