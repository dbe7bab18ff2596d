import type { LookupAddress } from 'node:dns';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { WebhookAgents } from '../../../src/events/webhook-agents.js';
import { WebhookDeliveryError, postWebhook } from '../../../src/events/webhook-sender.js';
import { SlotsClosedError } from '../../../src/events/webhook-slots.js';
import type { ResolveAll } from '../../../src/events/webhook-target.js';

/**
 * A receiver on loopback that tells which connection each request came on. `onRequest` decides what to do with
 * the n-th request of its connection (default: answer 200).
 */
class Receiver {
  /** Every connection the receiver accepted, in order. */
  readonly sockets: Socket[] = [];
  /** Per request: the index of its connection in `sockets`, its Host and Connection headers, and the test's X-N. */
  readonly requests: { socket: number; host: string; connection: string; n: string }[] = [];
  onRequest: (req: IncomingMessage, res: ServerResponse, nth: number) => void = (_req, res) => void res.end('ok');
  private readonly served = new WeakMap<Socket, number>();
  private server: Server | undefined;

  async start(): Promise<number> {
    this.server = createServer((req, res) => {
      const nth = (this.served.get(req.socket) ?? 0) + 1;
      this.served.set(req.socket, nth);
      this.requests.push({
        socket: this.sockets.indexOf(req.socket),
        host: String(req.headers.host),
        connection: String(req.headers.connection),
        n: String(req.headers['x-n']),
      });
      req.resume();
      req.on('end', () => this.onRequest(req, res, nth));
    });
    this.server.on('connection', (socket: Socket) => this.sockets.push(socket));
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    return (this.server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise((r) => (this.server ? this.server.close(r) : r(undefined)));
  }
}

/** Resolves every name to loopback and counts the lookups (one per new connection). */
function loopbackResolver(): { resolveAll: ResolveAll; asked: string[] } {
  const asked: string[] = [];
  const resolveAll: ResolveAll = async (host) => {
    asked.push(host);
    return [{ address: '127.0.0.1', family: 4 } satisfies LookupAddress];
  };
  return { resolveAll, asked };
}

/** Resolves once `cond` holds (polled every 5 ms). */
async function waitUntil(cond: () => boolean): Promise<void> {
  while (!cond()) await sleep(5);
}

const POOLED = { keepAliveMs: 4000, maxSocketsPerHost: 32 };

describe('webhook deliveries over keep-alive connections', () => {
  const receivers: Receiver[] = [];
  const pools: WebhookAgents[] = [];
  afterEach(async () => {
    for (const a of pools.splice(0)) a.destroy();
    for (const r of receivers.splice(0)) await r.stop();
  });

  async function receiver(): Promise<[Receiver, number]> {
    const r = new Receiver();
    receivers.push(r);
    return [r, await r.start()];
  }

  function agents(config = POOLED): WebhookAgents {
    const a = new WebhookAgents(config);
    pools.push(a);
    return a;
  }

  it('deliveries to one receiver, one after another, share one connection', async () => {
    const [r, port] = await receiver();
    const pool = agents();
    for (let i = 0; i < 5; i++) {
      expect(await postWebhook(new URL(`http://127.0.0.1:${port}/hook`), '{}', {}, { timeoutMs: 2000, allowPrivate: true, agents: pool })).toBe(200);
    }
    expect(r.requests).toHaveLength(5);
    expect(r.sockets).toHaveLength(1);
  });

  it('origins do not share sockets: another port, or another host name for the same address, gets its own connection', async () => {
    const [r1, port1] = await receiver();
    const [r2, port2] = await receiver();
    const dns = loopbackResolver();
    const pool = agents();
    const origins = [`127.0.0.1:${port1}`, `a.hooks.test:${port1}`, `b.hooks.test:${port1}`, `127.0.0.1:${port2}`];
    for (let round = 0; round < 2; round++) {
      for (const origin of origins) {
        const status = await postWebhook(new URL(`http://${origin}/hook`), '{}', {}, { timeoutMs: 2000, allowPrivate: true, resolveAll: dns.resolveAll, agents: pool });
        expect(status).toBe(200);
      }
    }
    // One connection per origin, each serving both rounds of its own origin only.
    expect(r1.sockets).toHaveLength(3);
    expect(r2.sockets).toHaveLength(1);
    for (const r of [r1, r2]) {
      for (let s = 0; s < r.sockets.length; s++) {
        const hosts = r.requests.filter((q) => q.socket === s).map((q) => q.host);
        expect(hosts).toHaveLength(2);
        expect(new Set(hosts).size).toBe(1);
      }
    }
    expect(new Set(r1.requests.map((q) => q.host))).toEqual(new Set([`127.0.0.1:${port1}`, `a.hooks.test:${port1}`, `b.hooks.test:${port1}`]));
    // Each name was resolved (and checked) once: for its one new connection.
    expect(dns.asked.sort()).toEqual(['a.hooks.test', 'b.hooks.test']);
  });

  it('a receiver that closes a connection as it is reused: the delivery goes again at once on a new connection, checked like any', async () => {
    const [r, port] = await receiver();
    let dropped = 0;
    // Drops (resets) the second request of every connection unanswered, as a server whose idle timeout fired as it arrived.
    r.onRequest = (req, res, nth) => {
      if (nth === 1) return void res.end('ok');
      dropped++;
      req.socket.destroy();
    };
    const dns = loopbackResolver();
    const pool = agents();
    const url = new URL(`http://hooks.reuse.test:${port}/hook`);
    for (let i = 0; i < 3; i++) {
      expect(await postWebhook(url, '{}', {}, { timeoutMs: 2000, allowPrivate: true, resolveAll: dns.resolveAll, agents: pool })).toBe(200);
    }
    // 1st: new connection; 2nd: the pooled one, dropped, sent again on a new one; 3rd: a new pooled connection.
    expect(dropped).toBe(1);
    expect(r.requests.map((q) => q.socket)).toEqual([0, 0, 1, 2]);
    // Every new connection, the retry's included, resolved its name through the guarded lookup.
    expect(dns.asked).toHaveLength(r.sockets.length);
  });

  it('the stale-socket retry happens once: a receiver that drops that one too fails the delivery; a first request dropped is not retried', async () => {
    const [r, port] = await receiver();
    const pool = agents();
    const url = new URL(`http://127.0.0.1:${port}/hook`);
    const post = () => postWebhook(url, '{}', {}, { timeoutMs: 2000, allowPrivate: true, agents: pool });
    expect(await post()).toBe(200);
    r.onRequest = (req) => req.socket.destroy();
    // The pooled connection dropped, then the new one too: two requests, then the failure.
    await expect(post()).rejects.toThrow('socket hang up');
    expect(r.requests).toHaveLength(3);
    // On a new connection a drop is the receiver's failure: sent once.
    await expect(post()).rejects.toThrow('socket hang up');
    expect(r.requests).toHaveLength(4);
  });

  it('a new connection still has its address checked: a name resolving to loopback is refused though a socket to that address is pooled', async () => {
    const [r, port] = await receiver();
    const pool = agents();
    expect(await postWebhook(new URL(`http://127.0.0.1:${port}/hook`), '{}', {}, { timeoutMs: 2000, allowPrivate: true, agents: pool })).toBe(200);
    const dns = loopbackResolver();
    const url = new URL(`http://hooks.private.test:${port}/hook`);
    for (let i = 0; i < 2; i++) {
      await expect(postWebhook(url, '{}', {}, { timeoutMs: 2000, allowPrivate: false, resolveAll: dns.resolveAll, agents: pool })).rejects.toThrow(
        'webhook host hooks.private.test resolves to a private address (127.0.0.1)',
      );
    }
    // Checked at each attempt (a refused lookup leaves no socket to reuse); the receiver saw only the first delivery.
    expect(dns.asked).toEqual(['hooks.private.test', 'hooks.private.test']);
    expect(r.requests).toHaveLength(1);
    expect(r.sockets).toHaveLength(1);
  });

  it('keepAliveMs is how long a connection may stay idle: a slower answer keeps it, a longer pause closes it (ours, not the receiver\'s close)', async () => {
    const [r, port] = await receiver();
    r.onRequest = (_req, res) => void setTimeout(() => res.end('ok'), 300);
    const pool = agents({ keepAliveMs: 100, maxSocketsPerHost: 32 });
    const url = new URL(`http://127.0.0.1:${port}/hook`);
    expect(await postWebhook(url, '{}', {}, { timeoutMs: 2000, allowPrivate: true, agents: pool })).toBe(200);
    expect(await postWebhook(url, '{}', {}, { timeoutMs: 2000, allowPrivate: true, agents: pool })).toBe(200);
    expect(r.sockets).toHaveLength(1);
    // The receiver (Node's default: 5 s idle) would keep it; we close it after 100 ms idle.
    const closed = await new Promise<number>((resolve) => {
      const since = Date.now();
      r.sockets[0]!.once('close', () => resolve(Date.now() - since));
    });
    expect(closed).toBeLessThan(2000);
    expect(await postWebhook(url, '{}', {}, { timeoutMs: 2000, allowPrivate: true, agents: pool })).toBe(200);
    expect(r.sockets).toHaveLength(2);
  });

  it('keepAliveMs 0: one connection per delivery, closed after it', async () => {
    const [r, port] = await receiver();
    const pool = agents({ keepAliveMs: 0, maxSocketsPerHost: 32 });
    for (let i = 0; i < 3; i++) {
      expect(await postWebhook(new URL(`http://127.0.0.1:${port}/hook`), '{}', {}, { timeoutMs: 2000, allowPrivate: true, agents: pool })).toBe(200);
    }
    expect(r.sockets).toHaveLength(3);
    expect(r.requests.map((q) => [q.socket, q.connection])).toEqual([[0, 'close'], [1, 'close'], [2, 'close']]);
  });

  /**
   * A receiver that holds every request unanswered (in `held`) until `answerFromNowOn()`, and a pool with
   * `maxSocketsPerHost` connections to it; `post(n)` sends delivery n (header X-N, in `r.requests`).
   */
  async function busyReceiver(maxSocketsPerHost: number) {
    const [r, port] = await receiver();
    const held: ServerResponse[] = [];
    r.onRequest = (_req, res) => void held.push(res);
    const pool = agents({ keepAliveMs: 4000, maxSocketsPerHost });
    const url = new URL(`http://127.0.0.1:${port}/hook`);
    const post = (n: number, timeoutMs = 5000) => postWebhook(url, '{}', { 'x-n': String(n) }, { timeoutMs, allowPrivate: true, agents: pool });
    const answerFromNowOn = (): void => {
      r.onRequest = (_req, res) => void res.end('ok');
    };
    return { r, port, held, pool, post, answerFromNowOn };
  }

  it.each([
    ['keeps its connection', {}, 1],
    ['closes its connection', { connection: 'close' }, 2],
  ] as const)(
    'all connections to a receiver busy: a delivery waiting for one fails at its deadline, and no connection is ever opened for it (the answer to the first %s)',
    async (_, answer, socketsAfter) => {
      const { r, port, held, post, answerFromNowOn } = await busyReceiver(1);
      const first = post(1);
      await expect(post(2, 300)).rejects.toThrow(`timeout: no free connection to 127.0.0.1:${port} (1 busy, 0 more waiting) within 300 ms`);
      expect(r.requests).toHaveLength(1);
      // The first one answered: its connection is free again (or closed). Node's Agent, holding the timed-out
      // delivery in its own queue, opened a connection for it when the first one's closed, and closed it unused.
      answerFromNowOn();
      held[0]!.writeHead(200, answer).end('ok');
      expect(await first).toBe(200);
      await sleep(300);
      expect(r.sockets).toHaveLength(1);
      expect(r.requests).toHaveLength(1);
      // The next delivery goes at once: on the first one's connection, or on a new one if it was closed.
      expect(await post(3, 2000)).toBe(200);
      expect(r.requests.map((q) => q.n)).toEqual(['1', '3']);
      expect(r.sockets).toHaveLength(socketsAfter);
    },
  );

  it('deliveries waiting for a connection go in the order they came, each on the connection the one before gave back', async () => {
    const { r, held, pool, post, answerFromNowOn } = await busyReceiver(1);
    const first = post(1);
    await waitUntil(() => held.length === 1);
    const waiting = [2, 3, 4, 5].map((n) => post(n));
    // What /metrics shows of this process's webhook connections: one busy, four deliveries waiting for it.
    await waitUntil(() => pool.usage().waiting === 4);
    expect(pool.usage()).toEqual({ held: 1, waiting: 4 });
    answerFromNowOn();
    held[0]!.end('ok');
    expect(await Promise.all([first, ...waiting])).toEqual([200, 200, 200, 200, 200]);
    expect(r.requests.map((q) => q.n)).toEqual(['1', '2', '3', '4', '5']);
    expect(r.sockets).toHaveLength(1);
    await waitUntil(() => pool.usage().held === 0);
    expect(pool.usage()).toEqual({ held: 0, waiting: 0 });
  });

  it('closing the pools (the process stopping) fails the deliveries still waiting for a connection at once, not as the receiver\'s fault, and opens none for them', async () => {
    const { r, held, pool, post } = await busyReceiver(1);
    const first = post(1);
    await waitUntil(() => held.length === 1);
    const waiting = post(2);
    const t0 = Date.now();
    pool.destroy();
    // Not a WebhookDeliveryError (that would count against the account's breaker): BullMQ retries it.
    await expect(waiting).rejects.toThrow(SlotsClosedError);
    expect(Date.now() - t0).toBeLessThan(1000);
    await expect(post(3)).rejects.toThrow(SlotsClosedError);
    // The one in flight had its connection closed under it.
    await expect(first).rejects.toThrow(WebhookDeliveryError);
    await sleep(200);
    expect(r.sockets).toHaveLength(1);
    expect(r.requests.map((q) => q.n)).toEqual(['1']);
  });

  it('a delivery that gave up waiting leaves the queue: the next one takes its turn, and it is never sent', async () => {
    const { r, port, held, post, answerFromNowOn } = await busyReceiver(1);
    const first = post(1);
    await waitUntil(() => held.length === 1);
    const gaveUp = post(2, 200);
    const third = post(3);
    await expect(gaveUp).rejects.toThrow(`timeout: no free connection to 127.0.0.1:${port} (1 busy, 1 more waiting) within 200 ms`);
    answerFromNowOn();
    held[0]!.end('ok');
    expect(await first).toBe(200);
    expect(await third).toBe(200);
    expect(r.requests.map((q) => q.n)).toEqual(['1', '3']);
    expect(r.sockets).toHaveLength(1);
  });

  it('a connection reset, or a deadline, gives the slot back: the delivery waiting goes at once', async () => {
    const { r, held, post } = await busyReceiver(1);
    // Reset by the receiver: the first fails, the second (waiting) is sent.
    const reset = post(1);
    await waitUntil(() => held.length === 1);
    const second = post(2, 500);
    held[0]!.socket!.destroy();
    await expect(reset).rejects.toThrow('socket hang up');
    await waitUntil(() => held.length === 2);
    // Held past its own deadline: it fails, and the third (waiting, with a longer one) is sent.
    const third = post(3);
    await expect(second).rejects.toThrow('timeout: no answer within 500 ms');
    await waitUntil(() => held.length === 3);
    held[2]!.end('ok');
    expect(await third).toBe(200);
    expect(r.requests.map((q) => q.n)).toEqual(['1', '2', '3']);
  });

  it('a delivery that waited, sent on a kept-alive connection as the receiver drops it, goes again on a new one, holding its slot until that ends', async () => {
    const { r, post } = await busyReceiver(1);
    r.onRequest = (req, res, nth) => (nth === 1 ? void res.end('ok') : req.socket.destroy());
    expect(await Promise.all([1, 2, 3].map((n) => post(n, 2000)))).toEqual([200, 200, 200]);
    // 1 on a new connection; 2 on it, dropped, sent again on a new one of its own; 3 on a new pooled one.
    expect(r.requests.map((q) => q.n)).toEqual(['1', '2', '2', '3']);
    expect(r.requests.map((q) => q.socket)).toEqual([0, 0, 1, 2]);
  });

  it('at most maxSocketsPerHost connections to an origin, busy and idle; another origin is not held up by it', async () => {
    const { r, held, pool, post, answerFromNowOn } = await busyReceiver(2);
    const [other, otherPort] = await receiver();
    const deliveries = [1, 2, 3, 4, 5].map((n) => post(n));
    await waitUntil(() => held.length === 2);
    expect(await postWebhook(new URL(`http://127.0.0.1:${otherPort}/hook`), '{}', {}, { timeoutMs: 2000, allowPrivate: true, agents: pool })).toBe(200);
    expect(other.requests).toHaveLength(1);
    answerFromNowOn();
    for (const res of held) res.end('ok');
    expect(await Promise.all(deliveries)).toEqual([200, 200, 200, 200, 200]);
    expect(r.requests.map((q) => q.n)).toEqual(['1', '2', '3', '4', '5']);
    expect(r.sockets).toHaveLength(2);
  });
});
