import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Queue } from 'bullmq';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import { givenUpWebhooks, replayGivenUp } from '../../src/events/webhook-replay.js';
import { WEBHOOK_QUEUE, type WebhookJobData } from '../../src/events/webhook-queue.js';
import type { Method } from '../../src/verification/types.js';
import { VerificationService } from '../../src/verification/verification-service.js';
import { startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { Receiver } from '../helpers/webhook-receiver.js';

/** A loopback port where nothing listens (connections refused) until a receiver is started on it. */
async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

const TIMEOUT_MS = 2000;
const COOL_OFF_MS = 2000;

// Both ways a webhook goes out: sent by the consumer at once (the default), and as a BullMQ job for every one.
describe.each([{ direct: true }, { direct: false }])('webhook isolation between accounts: per-account cap and circuit breaker (webhooks.direct: $direct)', { timeout: 60_000 }, ({ direct }) => {
  let t: TestEngine;
  let service: VerificationService;
  let store: AccountStore;
  let queue: Queue<WebhookJobData>;
  const receivers: Receiver[] = [];

  beforeAll(async () => {
    t = await startTestEngine(
      testConfig({
        webhooks: {
          allowPrivate: true,
          direct,
          timeoutMs: TIMEOUT_MS,
          attempts: 4,
          backoffMs: 200,
          orderPollMs: 50,
          concurrency: 4,
          accountConcurrency: 2,
          breaker: { failures: 3, coolOffMs: COOL_OFF_MS, maxCoolOffMs: 4 * COOL_OFF_MS },
        },
        accounts: { fieldCacheMs: 0 },
      }),
      'all',
    );
    // Created through the domain service with no delivery queue: each create writes exactly one `sent` event.
    service = new VerificationService(t.redis, t.keys, t.sealer, t.config, { enqueue: async () => undefined }, pino({ level: 'silent' }), new Set<Method>(['flash_call']));
    store = new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true });
    queue = new Queue<WebhookJobData>(WEBHOOK_QUEUE, { connection: t.redis, prefix: t.keys.bullPrefix() });
  });
  afterAll(async () => {
    await queue?.close();
    await t?.stop();
    for (const r of receivers) await r.stop();
  });

  async function accountWith(url: string) {
    const a = await t.account();
    await store.setWebhook(a.account_id, url);
    return a;
  }

  async function send(a: Awaited<ReturnType<typeof accountWith>>, n: number, first: number): Promise<string[]> {
    const ids: string[] = [];
    for (let i = 0; i < n; i++) ids.push((await service.create(a, { phone_number: `+4477009${String(first + i).padStart(5, '0')}` })).request_id);
    return ids;
  }

  async function metric(name: string): Promise<number> {
    const text = await (await fetch(`${t.url}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(name + ' ') || l.startsWith(name + '{'));
    return line ? Number(line.split(' ').pop()) : 0;
  }

  function logged(msg: string, accountId: string): Record<string, unknown>[] {
    return t.logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === msg && l.account_id === accountId);
  }

  /** The attempts an event's webhook has had: its job's, and the webhook consumer's first try when it sent it at once and failed. */
  function attemptsOf(j: { attemptsMade: number; data: WebhookJobData }): number {
    return j.attemptsMade + (j.data.attempts_before ?? 0);
  }

  async function jobsOf(accountId: string) {
    const jobs = await queue.getJobs(['completed', 'failed', 'delayed', 'waiting', 'active']);
    return jobs.filter((j) => j?.data.account_id === accountId);
  }

  it('a receiver that never answers holds at most accountConcurrency slots; another account is served meanwhile; the breaker opens, defers without spending attempts, and closes on a good probe', async () => {
    const dead = new Receiver();
    const healthy = new Receiver();
    receivers.push(dead, healthy);
    dead.hang = true;
    const deadAccount = await accountWith(await dead.start());
    const healthyAccount = await accountWith(await healthy.start());
    let abandonedWhenHealthyServed = -1;
    healthy.onRequest = () => (abandonedWhenHealthyServed = dead.abandoned);

    // 8 events of the dead account first: without a cap they would take all 4 slots for TIMEOUT_MS at a time.
    const deadRequests = await send(deadAccount, 8, 100);
    await waitFor(async () => dead.open === 2);
    // /metrics shows the two deliveries holding the dead receiver's connections.
    expect(await metric('flashverify_webhook_connections_busy')).toBe(2);
    const [healthyRequest] = await send(healthyAccount, 1, 200);
    await waitFor(async () => healthy.delivered().size === 1, TIMEOUT_MS);
    expect(healthy.received[0]!.json.request_id).toBe(healthyRequest);
    // Served while the dead account's first deliveries were still hanging, none of them given up on yet.
    expect(abandonedWhenHealthyServed).toBe(0);
    // Jobs beyond the cap step aside (deferred); direct sends wait for the account's slots in memory instead.
    if (!direct) expect(await metric('flashverify_webhook_deferred_total{reason="account_limit"}')).toBeGreaterThan(0);

    // Timeouts in a row (3) open the breaker: the account's deliveries are deferred, the receiver gets nothing.
    await waitFor(async () => (await metric('flashverify_webhook_breaker_open')) === 1, 4 * TIMEOUT_MS);
    const opened = logged('webhook breaker open: deliveries to this account deferred', deadAccount.account_id);
    expect(opened).toHaveLength(1);
    expect(opened[0]).toMatchObject({ failures: 3, cool_off_ms: COOL_OFF_MS, err: `timeout: no answer within ${TIMEOUT_MS} ms` });
    await waitFor(async () => dead.open === 0, TIMEOUT_MS + 500);
    const triedBeforeOpen = dead.received.length;
    await waitFor(async () => (await metric('flashverify_webhook_deferred_total{reason="breaker"}')) > 0);
    await new Promise((r) => setTimeout(r, COOL_OFF_MS / 2));
    expect(dead.received.length).toBe(triedBeforeOpen);
    expect(dead.maxOpen).toBe(2);

    // The receiver recovers: after the cool-off one probe goes, succeeds, and the breaker closes.
    dead.hang = false;
    await waitFor(async () => dead.delivered().size === 8, 4 * COOL_OFF_MS);
    await waitFor(async () => logged('webhook breaker closed: deliveries to this account resume', deadAccount.account_id).length === 1);
    expect(logged('webhook breaker half-open: one probe delivery decides', deadAccount.account_id).length).toBeGreaterThanOrEqual(1);
    expect(await metric('flashverify_webhook_breaker_open')).toBe(0);
    await waitFor(async () => (await metric('flashverify_webhook_connections_busy')) === 0);
    expect(await metric('flashverify_webhook_connections_waiting')).toBe(0);
    expect(new Set(dead.received.map((r) => r.json.request_id))).toEqual(new Set(deadRequests));

    // Nothing lost, nothing given up: each attempt BullMQ counted is a request the receiver saw; deferrals spent none.
    const jobs = await waitFor(async () => {
      const j = await jobsOf(deadAccount.account_id);
      return j.length === 8 && j.every((x) => x.finishedOn) ? j : undefined;
    });
    expect(await Promise.all(jobs.map((j) => j.getState()))).toEqual(Array(8).fill('completed'));
    expect(jobs.reduce((n, j) => n + attemptsOf(j), 0)).toBe(dead.received.length);
    for (const line of t.logs.filter((l) => l.includes('webhook breaker'))) {
      expect(line).not.toContain(deadAccount.api_secret);
      expect(line).not.toMatch(/447700900\d\d\d/);
    }
  });

  it('a refusing receiver: a failed probe re-opens the breaker for twice the cool-off; no event is given up while it waits; the receiver back, all arrive', async () => {
    const port = await closedPort();
    const a = await accountWith(`http://127.0.0.1:${port}/hook`);
    const requests = await send(a, 5, 300);
    await waitFor(async () => logged('webhook breaker open: deliveries to this account deferred', a.account_id).length === 1, 4 * TIMEOUT_MS);
    expect(logged('webhook breaker open: deliveries to this account deferred', a.account_id)[0]!.err).toMatch(/ECONNREFUSED/);
    // The first probe finds the port still closed.
    const reopened = await waitFor(async () => logged('webhook breaker probe failed: open again', a.account_id)[0], 3 * COOL_OFF_MS);
    expect(reopened.cool_off_ms).toBe(2 * COOL_OFF_MS);
    // 5 events of 4 attempts each, waiting through two cool-offs: none given up, and the attempts BullMQ counted
    // are exactly the failed deliveries (the breaker's count): the deferrals spent none.
    const waiting = await jobsOf(a.account_id);
    expect(waiting).toHaveLength(5);
    expect(waiting.filter((j) => j.finishedOn)).toEqual([]);
    const failures = Number(await t.redis.hget(t.keys.webhookBreaker(a.account_id), 'failures'));
    expect(waiting.reduce((n, j) => n + attemptsOf(j), 0)).toBe(failures);
    expect(failures).toBeLessThan(5 * 2);

    const receiver = new Receiver();
    receivers.push(receiver);
    await receiver.start(port);
    await waitFor(async () => receiver.delivered().size === 5, 6 * COOL_OFF_MS);
    expect(new Set(receiver.received.map((r) => r.json.request_id))).toEqual(new Set(requests));
    await waitFor(async () => logged('webhook breaker closed: deliveries to this account resume', a.account_id).length === 1);
    expect(await queue.getFailed()).toEqual([]);
  });

  it('setting the webhook URL again closes an open breaker at once', async () => {
    const dead = new Receiver();
    receivers.push(dead);
    const port = await closedPort();
    const a = await accountWith(`http://127.0.0.1:${port}/hook`);
    await send(a, 3, 400);
    await waitFor(async () => logged('webhook breaker open: deliveries to this account deferred', a.account_id).length === 1, 4 * TIMEOUT_MS);
    expect(await t.redis.sismember(t.keys.webhookBreakersOpen(), a.account_id)).toBe(1);
    await store.setWebhook(a.account_id, await dead.start());
    expect(await t.redis.sismember(t.keys.webhookBreakersOpen(), a.account_id)).toBe(0);
    expect(await t.redis.exists(t.keys.webhookBreaker(a.account_id))).toBe(0);
  });
});

describe('webhooks.maxAgeMs: a dead receiver does not keep its events waiting for ever', { timeout: 60_000 }, () => {
  const MAX_AGE_MS = 3000;
  let t: TestEngine;
  let queue: Queue<WebhookJobData>;
  let receiver: Receiver | undefined;

  beforeAll(async () => {
    t = await startTestEngine(
      testConfig({
        webhooks: {
          allowPrivate: true,
          timeoutMs: 1000,
          attempts: 15,
          backoffMs: 200,
          maxAgeMs: MAX_AGE_MS,
          breaker: { failures: 1, coolOffMs: 500, maxCoolOffMs: 500 },
        },
        accounts: { fieldCacheMs: 0 },
      }),
      'all',
    );
    queue = new Queue<WebhookJobData>(WEBHOOK_QUEUE, { connection: t.redis, prefix: t.keys.bullPrefix() });
  });
  afterAll(async () => {
    await queue?.close();
    await t?.stop();
    await receiver?.stop();
  });

  it('an event held by an open breaker (no attempt spent) is given up at maxAgeMs, replayable, and a replay is not given up at once', async () => {
    const port = await closedPort();
    const a = await t.account();
    await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(a.account_id, `http://127.0.0.1:${port}/hook`);
    const service = new VerificationService(t.redis, t.keys, t.sealer, t.config, { enqueue: async () => undefined }, pino({ level: 'silent' }), new Set<Method>(['flash_call']));
    const { request_id } = await service.create(a, { phone_number: '+447700900500' });

    // Refused, the breaker opens after one failure and defers it (500 ms at a time; only its probes spend attempts); at 3 s it is given up.
    const failed = await waitFor(async () => (await queue.getFailed()).find((j) => j.data.request_id === request_id), 4 * MAX_AGE_MS);
    expect(failed.failedReason).toBe(`not delivered within webhooks.maxAgeMs (${MAX_AGE_MS} ms) of being queued`);
    expect(failed.finishedOn! - failed.timestamp).toBeGreaterThanOrEqual(MAX_AGE_MS);
    // Attempts left of the 15 configured (only the breaker's probes spent any): the age ended it, not the attempts.
    expect(failed.attemptsMade).toBeLessThan(15);
    const givenUp = t.logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => String(l.msg).startsWith('webhook given up: not delivered within'));
    expect(givenUp).toHaveLength(1);
    expect(givenUp[0]).toMatchObject({ request_id, account_id: a.account_id, event: 'verification.sent' });

    // The receiver back, the operator replays it: delivered, although its first queueing is older than maxAgeMs.
    receiver = new Receiver();
    await receiver.start(port);
    await t.redis.del(t.keys.webhookBreaker(a.account_id));
    const [job] = await givenUpWebhooks(queue, { accountId: a.account_id });
    await replayGivenUp(t.redis, t.keys, [job!]);
    await waitFor(async () => receiver!.delivered().size === 1, 4000);
    expect(receiver.received[0]!.json.request_id).toBe(request_id);
    expect(await job!.getState()).toBe('completed');
  });
});
