/**
 * `flashverify start --role webhooks` with `webhooks.inWorkers: false`: webhooks go out from a process of their own,
 * never from the processes that originate calls. Real processes through the CLI, real Redis, a real HTTP receiver.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import { engineCluster, sentAfterWebhooksKill, type EngineCluster } from '../helpers/engine-process.js';
import { http, readEvents, waitFor } from '../helpers/engine.js';
import { findFreePort } from '../helpers/sipp.js';
import { Receiver } from '../helpers/webhook-receiver.js';

const TEST_NUMBER = '+447700900555';

describe('--role webhooks (webhooks.inWorkers: false)', () => {
  let cluster: EngineCluster | undefined;
  let receiver: Receiver | undefined;
  afterEach(async () => {
    await cluster?.cleanup();
    await receiver?.stop();
    cluster = undefined;
    receiver = undefined;
  });

  /** An `all` process with `webhooks` config, an account whose webhook URL is the receiver, and one request to the test number. */
  async function oneRequest(webhooks: Record<string, unknown>, extra: Record<string, unknown> = {}) {
    const r = (receiver = new Receiver());
    const url = await r.start();
    const c = (cluster = await engineCluster({
      // Not a test of the per-key rate limit (10/s): a burst of creates and checks must not meet it.
      api: { defaultRateLimitPerSecond: 1000 },
      ...extra,
      webhooks: { allowPrivate: true, backoffMs: 100, orderPollMs: 50, ...webhooks },
      fraud: { testNumbers: [{ number: TEST_NUMBER, code: '1234' }] },
    }));
    const all = await c.start('all');
    const a = await c.account();
    r.secret = a.api_secret;
    await new AccountStore(c.redis, c.keys, c.sealer, { allowPrivateWebhooks: true }).setWebhook(a.account_id, url);
    const created = await http(`${c.httpUrl}/v1/verify`, { auth: a.auth, body: { phone_number: TEST_NUMBER } });
    expect(created.status).toBe(201);
    return { c, r, all, a, id: String(created.body.request_id) };
  }

  it('the worker sends none; a webhooks process sends them all, signed and in order, serves its metrics, and stops on SIGTERM', async () => {
    const metricsPort = await findFreePort();
    // The `all` process opens no operator listener (it serves /metrics on the API port): this port is the webhooks process's.
    const { c, r, all, a, id } = await oneRequest({ inWorkers: false }, { metrics: { port: metricsPort } });
    expect(all.output()).toContain('webhooks are sent by `--role webhooks` processes only');
    await waitFor(async () => (await readEvents(c.redis, c.keys)).some((e) => e.request_id === id && e.status === 'delivered'), 5000);
    expect((await http(`${c.httpUrl}/v1/verify/check`, { auth: a.auth, body: { request_id: id, code: '1234' } })).status).toBe(200);
    // The worker side applied every event (the status consumer runs there) ...
    await waitFor(async () => (await http(`${c.httpUrl}/v1/verify/${id}`, { auth: a.auth, method: 'GET' })).body.status === 'verified', 5000);
    // ... and, given time that in-worker delivery takes a few ms of, sent no webhook.
    await new Promise((done) => setTimeout(done, 1500));
    expect(r.received).toHaveLength(0);

    const hooks = await c.start('webhooks');
    const got = await waitFor(async () => {
      const got = r.forRequest(id);
      return got.some((x) => x.json.event === 'verification.verified') ? got : undefined;
    }, 15_000);
    expect(got.map((x) => x.json.event)).toEqual(['verification.sent', 'verification.delivered', 'verification.verified']);
    expect(got.every((x) => x.signatureValid)).toBe(true);

    // Its operator listener: ready (Redis), and its metrics show the deliveries it took from the queue.
    expect((await fetch(`http://127.0.0.1:${metricsPort}/readyz`)).status).toBe(200);
    // The receiver records a request before it answers; the sender counts the delivery once the answer is in.
    const metrics = await waitFor(async () => {
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      return /^flashverify_webhook_delivery_seconds_count 3$/m.test(text) ? text : undefined;
    }, 5000);
    // Sent by its webhook consumer at once (webhooks.direct, the default), none through a job.
    expect(metrics).toMatch(/^flashverify_webhook_direct_total\{result="done"\} 3$/m);
    expect(metrics).not.toMatch(/^flashverify_job_latency_seconds_count\{queue="webhook"\} [1-9]/m);
    // The three delivered (2xx), each timed to the receiver's status line.
    expect(metrics).toMatch(/^flashverify_webhook_delivery_seconds_count 3$/m);
    expect(Number(/^flashverify_webhook_delivery_seconds_sum (\S+)$/m.exec(metrics)?.[1])).toBeGreaterThan(0);
    // And each from its event written to the stream: the events waited for this process, over 1.5 s, all of it counted.
    expect(metrics).toMatch(/^flashverify_webhook_lag_seconds_count 3$/m);
    expect(metrics).toMatch(/^flashverify_webhook_lag_seconds_bucket\{le="1"\} 0$/m);
    expect(Number(/^flashverify_webhook_lag_seconds_sum (\S+)$/m.exec(metrics)?.[1])).toBeGreaterThan(3 * 1.5);
    // It never opened a SIP socket or took delivery jobs.
    expect(hooks.output()).not.toContain('worker role started');
    expect(metrics).not.toMatch(/^flashverify_job_latency_seconds_count\{queue="flash"\} [1-9]/m);

    hooks.kill('SIGTERM');
    const exit = await hooks.waitExit(10_000);
    expect(exit).toMatchObject({ code: 0, timedOut: false });
  });

  it('workers send webhooks themselves by default (inWorkers: true); a webhooks process started beside them is one more sender, and each webhook still goes once', async () => {
    const { c, r, all, a, id } = await oneRequest({});
    expect(all.output()).not.toContain('webhooks are sent by `--role webhooks` processes only');
    const got = await waitFor(async () => {
      const got = r.forRequest(id);
      return got.some((x) => x.json.event === 'verification.delivered') ? got : undefined;
    }, 10_000);
    expect(got.map((x) => x.json.event)).toEqual(['verification.sent', 'verification.delivered']);

    // One consumer group and one queue for both senders: an event goes to one of them, never to both.
    await c.start('webhooks');
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const created = await http(`${c.httpUrl}/v1/verify`, { auth: a.auth, body: { phone_number: TEST_NUMBER } });
      expect(created.status).toBe(201);
      ids.push(String(created.body.request_id));
      // Checked: a third webhook (verified) per request.
      expect((await http(`${c.httpUrl}/v1/verify/check`, { auth: a.auth, body: { request_id: ids[i], code: '1234' } })).status).toBe(200);
    }
    await waitFor(async () => ids.every((x) => r.forRequest(x).some((h) => h.json.event === 'verification.verified')), 15_000);
    await new Promise((done) => setTimeout(done, 1000));
    for (const x of ids) expect(r.forRequest(x).map((h) => h.json.event)).toEqual(['verification.sent', 'verification.delivered', 'verification.verified']);
  });

  it('a webhooks process killed mid-delivery: the next one runs its job again after worker.lockDurationMs (not BullMQ\'s 30 s), answered 200 once', async () => {
    // webhooks.direct off: every webhook is a job (a direct send's crash is webhook-direct.test.ts's).
    const { c, r, id } = await oneRequest({ inWorkers: false, direct: false }, { worker: { lockDurationMs: 2000, stalledIntervalMs: 1000 } });
    r.hang = true;
    const first = await c.start('webhooks');
    // Its `sent` job is in flight and the receiver holds it unanswered.
    const hung = await waitFor(async () => r.forRequest(id)[0]);
    expect(hung.json.event).toBe('verification.sent');
    // Run again by the next process within 10 s of its start: the dead process's lock lapses within 2 s and the new one
    // looks for stalled jobs every second. BullMQ's defaults (30 s each) would leave the job active for half a minute.
    const sent = await sentAfterWebhooksKill(c, first, r, id, 10_000);
    expect(sent.map((x) => [x.headers['x-flashverify-event-id'], x.answered])).toEqual([
      [hung.headers['x-flashverify-event-id'], 0],
      [hung.headers['x-flashverify-event-id'], 200],
    ]);
  });
});
