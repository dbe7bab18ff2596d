import type { LookupAddress } from 'node:dns';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import type { DeepPartial } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { AccountStore } from '../../src/accounts/account-store.js';
import type { ResolveAll } from '../../src/events/webhook-target.js';
import { startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { Receiver } from '../helpers/webhook-receiver.js';
import { startWebhookWorker, type WebhookWorker } from '../helpers/webhook-worker.js';

/**
 * Name resolution of webhook hosts as a process that sends webhooks does it (webhook-host-cache.ts): the
 * production processor under a real BullMQ worker, real HTTP receivers on loopback, and a resolver injected in
 * place of the system's that counts what it is asked. `webhooks.keepAliveMs: 0` gives each delivery a connection
 * of its own, so without the cache each delivery would look its host up when it connects.
 */

/** What the test's resolver does for a host. */
type Behaviour = 'loopback' | 'hang' | 'fail';

/** The injected resolver: answers after `delayMs`, counts the lookups asked and how many were running at once. */
class CountingResolver {
  readonly asked: string[] = [];
  /** When each answer was given (ms). */
  readonly answeredAt: number[] = [];
  running = 0;
  maxRunning = 0;
  delayMs = 0;
  behaviour: (host: string) => Behaviour = () => 'loopback';

  readonly resolveAll: ResolveAll = async (host) => {
    this.asked.push(host);
    this.running++;
    this.maxRunning = Math.max(this.maxRunning, this.running);
    const behaviour = this.behaviour(host);
    // A resolver that never answers keeps its lookup running: `running` counts it for good.
    if (behaviour === 'hang') return new Promise<LookupAddress[]>(() => undefined);
    try {
      await sleep(this.delayMs);
      if (behaviour === 'fail') throw Object.assign(new Error(`getaddrinfo EAI_AGAIN ${host}`), { code: 'EAI_AGAIN' });
      this.answeredAt.push(Date.now());
      return [{ address: '127.0.0.1', family: 4 }];
    } finally {
      this.running--;
    }
  };
}

describe('webhook host lookups: cache, single flight, cap', () => {
  let t: TestEngine | undefined;
  let w: WebhookWorker | undefined;
  let receiver: Receiver | undefined;
  let dns: CountingResolver;

  afterEach(async () => {
    await w?.stop();
    await t?.stop();
    await receiver?.stop();
    [t, w, receiver] = [undefined, undefined, undefined];
  });

  /** An api-role engine with `webhooks` settings, a receiver, and a webhook worker of `concurrency` on `dns`. */
  async function start(webhooks: DeepPartial<Config['webhooks']>, concurrency: number): Promise<{ t: TestEngine; w: WebhookWorker; receiver: Receiver; port: string }> {
    dns = new CountingResolver();
    t = await startTestEngine(testConfig({ webhooks: { allowPrivate: true, keepAliveMs: 0, backoffMs: 100, ...webhooks } }), 'api');
    receiver = new Receiver();
    const port = new URL(await receiver.start()).port;
    w = startWebhookWorker(t, { concurrency, resolveAll: dns.resolveAll });
    return { t, w, receiver, port };
  }

  /** An account whose webhook URL is on `host` (as if it had resolved publicly when it was set), the receiver knowing its secret. */
  async function accountOn(host: string, port: string): Promise<Awaited<ReturnType<TestEngine['account']>>> {
    const a = await t!.account();
    receiver!.secret = a.api_secret;
    await t!.redis.hset(t!.keys.account(a.account_id), 'webhook_url', `http://${host}:${port}/hooks/flashverify`);
    return a;
  }

  it('deliveries to one host within webhooks.dnsCacheMs make one lookup; the first after it makes the next', async () => {
    const { w, receiver, port } = await start({ dnsCacheMs: 4000, attempts: 1 }, 1);
    const a = await accountOn('hooks.cached.test', port);
    for (let i = 0; i < 5; i++) {
      await w.queueSent(a, `+44770090030${i}`);
      await waitFor(async () => receiver.accepted().length === i + 1);
    }
    expect(Date.now() - dns.answeredAt[0]!).toBeLessThan(4000); // all within the cache time
    expect(dns.asked).toEqual(['hooks.cached.test']);
    await sleep(dns.answeredAt[0]! + 4000 + 50 - Date.now());
    await w.queueSent(a, '+447700900309');
    await waitFor(async () => receiver.accepted().length === 6);
    expect(dns.asked).toEqual(['hooks.cached.test', 'hooks.cached.test']);
    expect(receiver.accepted().every((r) => r.signatureValid)).toBe(true);
    expect(await w.metric('flashverify_webhook_dns_lookups_total')).toBe(2);
    expect(await w.metric('flashverify_webhook_dns_cache_hits_total{answer="fresh"}')).toBe(4);
  });

  it('deliveries to one host at the same time share one lookup', async () => {
    const { w, receiver, port } = await start({ attempts: 1 }, 10);
    dns.delayMs = 300; // the deliveries all start while the first one's lookup is still out
    const a = await accountOn('hooks.together.test', port);
    await Promise.all(Array.from({ length: 10 }, (_, i) => w.queueSent(a, `+44770090031${i}`)));
    await waitFor(async () => receiver.accepted().length === 10);
    expect(dns.asked).toEqual(['hooks.together.test']);
    expect(dns.maxRunning).toBe(1);
  });

  it('a resolver that never answers: at most webhooks.maxLookups lookups run, those deliveries fail at their deadline and are retried, and a cached host keeps going', async () => {
    const { t, w, receiver, port } = await start({ timeoutMs: 400, attempts: 2, maxLookups: 2, dnsCacheMs: 60_000 }, 10);
    dns.behaviour = (host) => (host.startsWith('hang-') ? 'hang' : 'loopback');
    const ok = await accountOn('hooks.ok.test', port);
    await w.queueSent(ok, '+447700900320');
    await waitFor(async () => receiver.accepted().length === 1);
    // Four receivers whose names the resolver never answers: more than the lookups allowed at once.
    const hung = await Promise.all([1, 2, 3, 4].map((n) => accountOn(`hang-${n}.test`, port)));
    for (const [i, a] of hung.entries()) await w.queueSent(a, `+44770090033${i}`);
    for (let i = 0; i < 6; i++) await w.queueSent(ok, `+44770090034${i}`);
    // The cached host's deliveries go at once, beside the ones waiting for a lookup.
    await waitFor(async () => receiver.accepted().length === 7, 5000);
    for (const job of await w.failed(4)) {
      expect(job.attemptsMade).toBe(2);
      expect(job.failedReason).toMatch(/^timeout: no DNS answer for hang-\d\.test within 400 ms$/);
    }
    // Two lookups hung for good, holding their slots; the other two hosts still wait for one; the cached host was asked once.
    expect(dns.maxRunning).toBe(2);
    expect(dns.asked.filter((h) => h.startsWith('hang-'))).toHaveLength(2);
    expect(dns.asked.filter((h) => h === 'hooks.ok.test')).toHaveLength(1);
    expect(w.processor.hosts.stats()).toMatchObject({ running: 2, waiting: 2 });
    expect(await w.metric('flashverify_webhook_dns_lookups_running')).toBe(2);
    expect(await w.metric('flashverify_webhook_dns_lookups_waiting')).toBe(2);
    expect(await w.metric('flashverify_webhook_dns_timeouts_total')).toBe(8);
    // One warning per lookup that timed out, naming its host, never a number.
    const timedOut = w.warnings.filter((l) => l.includes('webhook host lookup timed out')).map((l) => JSON.parse(l) as { host: string });
    expect(timedOut.map((l) => l.host).sort()).toEqual(['hang-1.test', 'hang-2.test', 'hang-3.test', 'hang-4.test']);
    expect(w.warnings.join('\n')).not.toMatch(/\+?4477009003/);
    expect(t.config.webhooks.maxLookups).toBe(2);
  });

  it('stale if error: once the cached answer has expired and the resolver fails, the deliveries go to the last answer', async () => {
    const { w, receiver, port } = await start({ dnsCacheMs: 300, dnsStaleMs: 60_000, dnsNegativeCacheMs: 5000, attempts: 1 }, 1);
    const a = await accountOn('hooks.flap.test', port);
    await w.queueSent(a, '+447700900350');
    await waitFor(async () => receiver.accepted().length === 1);
    await sleep(400);
    dns.behaviour = () => 'fail';
    for (let i = 1; i <= 3; i++) {
      await w.queueSent(a, `+44770090035${i}`);
      await waitFor(async () => receiver.accepted().length === i + 1);
    }
    // One refresh failed; its failure is kept 5 s, the expired answer used meanwhile without asking again.
    expect(dns.asked).toEqual(['hooks.flap.test', 'hooks.flap.test']);
    expect(await w.queue.queue.getFailedCount()).toBe(0);
    expect(await w.metric('flashverify_webhook_dns_failures_total{reason="error"}')).toBe(1);
    expect(await w.metric('flashverify_webhook_dns_cache_hits_total{answer="stale"}')).toBe(3);
  });
});

describe('setting a webhook URL (admin API, CLI) while the resolver does not answer', () => {
  it('is refused as invalid_webhook_url at the bound, not left hanging, and nothing is stored', async () => {
    const t = await startTestEngine(testConfig(), 'api');
    try {
      const a = await t.account();
      const store = new AccountStore(t.redis, t.keys, t.sealer, { resolveAll: () => new Promise<LookupAddress[]>(() => undefined), webhookLookupTimeoutMs: 300 });
      const t0 = Date.now();
      await expect(store.setWebhook(a.account_id, 'https://hooks.hang.test/x')).rejects.toMatchObject({
        code: 'invalid_webhook_url',
        message: 'no DNS answer for the webhook host within 300 ms; try again',
      });
      expect(Date.now() - t0).toBeLessThan(2000);
      expect(await t.redis.hget(t.keys.account(a.account_id), 'webhook_url')).toBeNull();
    } finally {
      await t.stop();
    }
  });
});
