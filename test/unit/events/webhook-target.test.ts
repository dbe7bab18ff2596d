import { createHmac } from 'node:crypto';
import type { LookupAddress } from 'node:dns';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { postWebhook, signWebhook } from '../../../src/events/webhook-sender.js';
import { WebhookHostCache } from '../../../src/events/webhook-host-cache.js';
import { assertWebhookTarget, guardedLookup, isPrivateAddress, WebhookTargetError, type ResolveAll } from '../../../src/events/webhook-target.js';
import { orderMember } from '../../../src/events/webhook-queue.js';

describe('webhook targets (SSRF)', () => {
  it('classifies private, loopback, link-local, CGNAT and ULA addresses', () => {
    for (const a of [
      '127.0.0.1', '127.255.0.9', '10.0.0.1', '172.16.0.1', '172.31.255.255', '192.168.0.1', '169.254.169.254',
      '100.64.0.1', '100.127.255.254', '0.0.0.0', '224.0.0.1', '255.255.255.255',
      '::1', '::', 'fc00::1', 'fd12:3456::1', 'fe80::1', 'ff02::1', '::ffff:127.0.0.1', '::ffff:7f00:1', '::ffff:10.0.0.1',
      'not-an-ip',
    ]) {
      expect(isPrivateAddress(a), a).toBe(true);
    }
    for (const a of ['93.184.215.14', '8.8.8.8', '172.32.0.1', '100.128.0.1', '2606:4700::1111', '::ffff:8.8.8.8']) {
      expect(isPrivateAddress(a), a).toBe(false);
    }
  });

  it('refuses non-http schemes and credentials in the URL, and private literals unless allowed', async () => {
    await expect(assertWebhookTarget('gopher://example.com/', true)).rejects.toBeInstanceOf(WebhookTargetError);
    await expect(assertWebhookTarget('https://u:p@example.com/', true)).rejects.toBeInstanceOf(WebhookTargetError);
    await expect(assertWebhookTarget('http://[::1]:8080/', false)).rejects.toThrow(/private address/);
    await expect(assertWebhookTarget('http://127.0.0.1:8080/', true)).resolves.toBeInstanceOf(URL);
  });
});

/**
 * DNS rebinding: a name that resolves to a public address when it is checked
 * (set time, and assertWebhookTarget before each delivery) and to loopback
 * when the request connects. The resolver is injected (no network here); the
 * receiver is a real HTTP server on 127.0.0.1 that must never be reached.
 */
describe('webhook targets: DNS rebinding at delivery time', () => {
  let server: Server | undefined;
  afterEach(async () => {
    await new Promise((r) => (server ? server.close(r) : r(undefined)));
    server = undefined;
  });

  async function receiver(): Promise<{ port: number; hits: string[] }> {
    const hits: string[] = [];
    server = createServer((req, res) => {
      hits.push(`${req.method} ${req.url}`);
      res.end();
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    return { port: (server.address() as AddressInfo).port, hits };
  }

  /** Answers `answers[i]` to the i-th lookup, then the last one forever. */
  function rebinding(...answers: string[][]): { resolveAll: ResolveAll; asked: string[] } {
    const asked: string[] = [];
    const resolveAll: ResolveAll = async (host) => {
      asked.push(host);
      const list = answers[Math.min(asked.length - 1, answers.length - 1)]!;
      return list.map((address): LookupAddress => ({ address, family: address.includes(':') ? 6 : 4 }));
    };
    return { resolveAll, asked };
  }

  it('a name that was public when checked and resolves to loopback at connect time is refused; nothing reaches the receiver', async () => {
    const { port, hits } = await receiver();
    const url = `http://hooks.rebind.test:${port}/hook`;
    const dns = rebinding(['93.184.215.14'], ['127.0.0.1']);
    const checked = await assertWebhookTarget(url, false, dns.resolveAll);
    await expect(postWebhook(checked, '{}', {}, { timeoutMs: 2000, allowPrivate: false, resolveAll: dns.resolveAll })).rejects.toThrow(
      'webhook host hooks.rebind.test resolves to a private address (127.0.0.1)',
    );
    expect(dns.asked).toEqual(['hooks.rebind.test', 'hooks.rebind.test']);
    expect(hits).toEqual([]);
  });

  it('one private address among public ones is enough to refuse (at check and at connect time)', async () => {
    const { port, hits } = await receiver();
    const url = new URL(`http://multi.rebind.test:${port}/hook`);
    const dns = rebinding(['93.184.215.14', '10.0.0.7']);
    await expect(assertWebhookTarget(url, false, dns.resolveAll)).rejects.toThrow(/private address \(10\.0\.0\.7\)/);
    await expect(postWebhook(url, '{}', {}, { timeoutMs: 2000, allowPrivate: false, resolveAll: dns.resolveAll })).rejects.toThrow(/private address \(10\.0\.0\.7\)/);
    expect(hits).toEqual([]);
  });

  /** The process's cache of host answers over `resolveAll`, as the webhook processor makes it. */
  const cacheOver = (resolveAll: ResolveAll, cacheMs = 30_000): WebhookHostCache =>
    new WebhookHostCache({ resolveAll, cacheMs, negativeCacheMs: 5_000, staleMs: 300_000, staleWaitMs: 500, maxLookups: 2 });

  it('with the host cache, the connect is given the answer the check saw (one lookup), checked again', async () => {
    const dns = rebinding(['93.184.215.14'], ['127.0.0.1']);
    const cache = cacheOver(dns.resolveAll);
    await assertWebhookTarget('http://hooks.rebind.test:8080/hook', false, cache.resolve);
    const connect = guardedLookup(false, cache.resolve);
    const given = await new Promise<unknown>((resolve) => connect('hooks.rebind.test', { all: true }, (err, list) => resolve(err ?? list)));
    expect(given).toEqual([{ address: '93.184.215.14', family: 4 }]);
    expect(dns.asked).toEqual(['hooks.rebind.test']);
  });

  it('with the host cache, an answer that turns private when the cached one expires between check and connect is refused; nothing reaches the receiver', async () => {
    const { port, hits } = await receiver();
    // 192.0.2.1 (TEST-NET-1) counts as public and leads nowhere, should the connect ever be given it.
    const dns = rebinding(['192.0.2.1'], ['127.0.0.1']);
    const cache = cacheOver(dns.resolveAll, 1000);
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      const checked = await assertWebhookTarget(`http://hooks.rebind.test:${port}/hook`, false, cache.resolve);
      vi.setSystemTime(Date.now() + 1000);
      await expect(postWebhook(checked, '{}', {}, { timeoutMs: 2000, allowPrivate: false, resolveAll: cache.resolve })).rejects.toThrow(
        'webhook host hooks.rebind.test resolves to a private address (127.0.0.1)',
      );
    } finally {
      vi.useRealTimers();
    }
    expect(dns.asked).toEqual(['hooks.rebind.test', 'hooks.rebind.test']);
    expect(hits).toEqual([]);
  });

  it('the host cache keeps answers, not verdicts: loopback cached for a delivery that may reach it is refused where private addresses are not allowed', async () => {
    const { port, hits } = await receiver();
    const dns = rebinding(['127.0.0.1']);
    const cache = cacheOver(dns.resolveAll);
    const url = new URL(`http://hooks.rebind.test:${port}/hook`);
    expect(await postWebhook(url, '{}', {}, { timeoutMs: 2000, allowPrivate: true, resolveAll: cache.resolve })).toBe(200);
    await expect(assertWebhookTarget(url, false, cache.resolve)).rejects.toThrow('webhook host hooks.rebind.test resolves to a private address (127.0.0.1)');
    await expect(postWebhook(url, '{}', {}, { timeoutMs: 2000, allowPrivate: false, resolveAll: cache.resolve })).rejects.toThrow(/private address \(127\.0\.0\.1\)/);
    expect(dns.asked).toEqual(['hooks.rebind.test']);
    expect(hits).toEqual(['POST /hook']);
  });

  it('the same injected resolution is what the request connects to (allowPrivate: the receiver is reached)', async () => {
    const { port, hits } = await receiver();
    const dns = rebinding(['127.0.0.1']);
    const status = await postWebhook(new URL(`http://hooks.rebind.test:${port}/hook`), '{}', {}, { timeoutMs: 2000, allowPrivate: true, resolveAll: dns.resolveAll });
    expect(status).toBe(200);
    expect(hits).toEqual(['POST /hook']);
  });
});

/**
 * One deadline for the whole delivery: a resolver that never answers must not hold the delivery past
 * `timeoutMs`, whether it hangs in the check before the request (assertWebhookTarget) or in the request's
 * own lookup; and time spent resolving counts against the receiver's time to answer.
 */
describe('webhook delivery deadline: name resolution included', () => {
  let server: Server | undefined;
  afterEach(async () => {
    server?.closeAllConnections();
    await new Promise((r) => (server ? server.close(r) : r(undefined)));
    server = undefined;
  });

  const hanging: ResolveAll = () => new Promise<LookupAddress[]>(() => undefined);

  it('the check before the request gives up on a resolver that never answers when the deadline passes', async () => {
    const started = Date.now();
    const signal = AbortSignal.timeout(300);
    await expect(assertWebhookTarget('https://hooks.hang.test/hook', false, hanging, signal)).rejects.toThrow(
      'timeout: no DNS answer for hooks.hang.test within the delivery timeout',
    );
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('the request\'s own lookup that never answers fails as a timeout of the resolver, not of the receiver', async () => {
    await expect(
      postWebhook(new URL('http://hooks.hang.test:9/hook'), '{}', {}, { timeoutMs: 300, allowPrivate: true, resolveAll: hanging }),
    ).rejects.toThrow('timeout: no DNS answer for hooks.hang.test within 300 ms');
  });

  it('a slow resolver and a slow receiver share one timeout: each alone in time, together too late', async () => {
    // The receiver answers 250 ms after the request; the resolver answers 250 ms after being asked.
    server = createServer((_req, res) => void setTimeout(() => res.end('ok'), 250));
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    const slow: ResolveAll = () =>
      new Promise((r) => setTimeout(() => r([{ address: '127.0.0.1', family: 4 }]), 250));
    const url = new URL(`http://hooks.slow.test:${port}/hook`);
    // The receiver alone fits in 400 ms; behind the slow lookup of the request itself, it does not.
    await expect(postWebhook(new URL(`http://127.0.0.1:${port}/hook`), '{}', {}, { timeoutMs: 400, allowPrivate: true })).resolves.toBe(200);
    await expect(postWebhook(url, '{}', {}, { timeoutMs: 400, allowPrivate: true, resolveAll: slow })).rejects.toThrow(/^timeout: no answer within 400 ms$/);
    // The check before the request (as the processor does it) spends the same deadline as the request.
    const signal = AbortSignal.timeout(400);
    await assertWebhookTarget(url, false, async () => {
      await new Promise((r) => setTimeout(r, 250));
      return [{ address: '93.184.215.14', family: 4 }];
    }, signal);
    await expect(
      postWebhook(new URL(`http://127.0.0.1:${port}/hook`), '{}', {}, { timeoutMs: 400, allowPrivate: true, signal }),
    ).rejects.toThrow(/^timeout: no answer within 400 ms$/);
  });
});

describe('webhook signature', () => {
  it('is sha256= + hex HMAC-SHA256 of the raw body with the API secret (the docs\' PHP check)', () => {
    const body = '{"event":"verification.delivered","request_id":"a1","phone_number":"+447700900000","method":"flash_call","status":"delivered","timestamp":"2026-03-04T15:00:02Z"}';
    const secret = 'ab'.repeat(32);
    expect(signWebhook(body, secret)).toBe('sha256=' + createHmac('sha256', secret).update(Buffer.from(body)).digest('hex'));
    expect(signWebhook(body, secret)).toMatch(/^sha256=[0-9a-f]{64}$/);
  });

  it('orders stream ids by time then sequence as strings', () => {
    const ids = ['1700000000000-10', '1700000000000-2', '999999999999-0', '1700000000001-0'];
    expect([...ids].sort((a, b) => (orderMember(a) < orderMember(b) ? -1 : 1))).toEqual([
      '999999999999-0',
      '1700000000000-2',
      '1700000000000-10',
      '1700000000001-0',
    ]);
  });
});
