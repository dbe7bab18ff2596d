import { request } from 'node:http';
import { connect } from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { http, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { ownRedis, type OwnRedis } from '../helpers/redis-server.js';

/**
 * api.maxInFlight: an api process with that many /v1 requests in progress answers one more with 503 at once, before
 * any work, instead of queueing it behind the others. Requests are held in progress by pausing a private Redis
 * (CLIENT PAUSE): authentication (authCacheMs 0) waits for it.
 */
describe('api: /v1 requests in progress are capped (api.maxInFlight)', { timeout: 30_000 }, () => {
  let own: OwnRedis;
  let t: TestEngine;
  let admin: Redis;

  beforeAll(async () => {
    own = await ownRedis();
    t = await startTestEngine(testConfig({ redis: { url: own.url }, api: { maxInFlight: 2, authCacheMs: 0 }, http: { requestTimeoutMs: 1500 } }), 'api');
    admin = new Redis(own.url);
  });
  afterAll(async () => {
    admin?.disconnect();
    await t?.stop();
    await own?.cleanup();
  });

  async function metric(name: string): Promise<number> {
    const text = await (await fetch(`${t.url}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(name + ' '));
    return Number(line?.split(' ').pop());
  }

  it('the request over the cap gets 503 service_unavailable with Retry-After at once; those in progress finish; the cap frees as they end, or as their clients go away', async () => {
    const a = await t.account();
    expect((await http(`${t.url}/v1/balance`, { auth: a.auth })).status).toBe(200);

    await admin.client('PAUSE', 2000, 'ALL');
    const paused = Date.now();
    const held = [http(`${t.url}/v1/balance`, { auth: a.auth })];
    // The second one's client gives up while it waits (closes its connection): it must not keep its place.
    const gone = request(`${t.url}/v1/balance`, { headers: { authorization: a.auth } });
    const abandoned = new Promise<string>((resolve) => gone.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message)).on('response', () => resolve('answered')));
    gone.end();
    await new Promise((r) => setTimeout(r, 200));

    const t0 = Date.now();
    const shed = await http(`${t.url}/v1/balance`, { auth: a.auth });
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(Date.now() - paused).toBeLessThan(1500); // answered while Redis was still paused: no Redis work
    expect(shed.status).toBe(503);
    expect(shed.body).toEqual({ error: 'service_unavailable', message: 'too many requests in progress in this server (api.maxInFlight 2); retry shortly' });
    expect(shed.headers.get('retry-after')).toBe('1');
    expect(shed.headers.get('x-ratelimit-limit')).toBeNull();
    // Health is not capped: an orchestrator still sees the process up.
    expect((await http(`${t.url}/healthz`)).status).toBe(200);

    gone.destroy();
    expect(await abandoned).toBe('ECONNRESET');
    // The server sees the connection close on its next turns.
    await new Promise((r) => setTimeout(r, 200));
    // Still paused: the abandoned request left its place when its connection closed, so one more is let in.
    const third = http(`${t.url}/v1/balance`, { auth: a.auth });
    const results = await Promise.all([...held, third]);
    expect(results.map((r) => r.status)).toEqual([200, 200]);

    expect(await metric('flashverify_api_shed_total')).toBe(1);
    // Counted, not logged as a failure with a stack (thousands a second under the overload it guards against).
    expect(t.logs.filter((l) => l.includes('"level":50') && l.includes('request failed'))).toEqual([]);
    await waitFor(async () => (await metric('flashverify_api_requests_in_flight')) === 0);
    // Both places free again: two at once go through.
    const after = await Promise.all([1, 2].map(() => http(`${t.url}/v1/balance`, { auth: a.auth })));
    expect(after.map((r) => r.status)).toEqual([200, 200]);
  });
  it('a client that sends its headers and stalls mid-body holds its place no longer than http.requestTimeoutMs: 408, its connection closed, the place free again', async () => {
    const a = await t.account();
    const { port } = new URL(t.url);
    // Two stalled uploads (complete headers with valid credentials, Content-Length 100, no body) take both places.
    const stalled = [1, 2].map(() => {
      const socket = connect(Number(port), '127.0.0.1');
      let got = '';
      socket.on('data', (d) => (got += d.toString()));
      const closed = new Promise<string>((resolve) => socket.on('close', () => resolve(got)));
      socket.write(`POST /v1/verify HTTP/1.1\r\nHost: x\r\nAuthorization: ${a.auth}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"phone_`);
      return closed;
    });
    const stalledAt = Date.now();
    await waitFor(async () => (await metric('flashverify_api_requests_in_flight')) === 2, 2000, 20);
    expect((await http(`${t.url}/v1/balance`, { auth: a.auth })).status).toBe(503);
    // The server gives up on them, answers 408 and closes: the places are free again.
    const answers = await Promise.all(stalled);
    expect(Date.now() - stalledAt).toBeLessThan(5000);
    for (const text of answers) {
      expect(text).toMatch(/^HTTP\/1\.1 408 /);
      // The catalogue's error shape, as every other error (not Fastify's {"error","message","statusCode"}).
      expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))).toEqual({
        error: 'invalid_request',
        message: 'the request was not received in full within 1500 ms',
      });
    }
    await waitFor(async () => (await metric('flashverify_api_requests_in_flight')) === 0, 2000, 20);
    const after = await Promise.all([1, 2].map(() => http(`${t.url}/v1/balance`, { auth: a.auth })));
    expect(after.map((r) => r.status)).toEqual([200, 200]);
  });
  it('bytes that are not HTTP, and headers over the limit, are answered 400 / 431 in the catalogue shape and the connection closed; the api goes on serving', async () => {
    const a = await t.account();
    const { port } = new URL(t.url);
    const raw = (text: string): Promise<string> =>
      new Promise((resolve) => {
        const socket = connect(Number(port), '127.0.0.1');
        let got = '';
        socket.on('data', (d) => (got += d.toString()));
        socket.on('error', () => undefined);
        socket.on('close', () => resolve(got));
        socket.write(text);
      });
    const body = (text: string): unknown => JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));

    const garbage = await raw('HELLO THERE\r\n\r\n');
    expect(garbage).toMatch(/^HTTP\/1\.1 400 /);
    expect(body(garbage)).toEqual({ error: 'invalid_request', message: 'the request is not valid HTTP/1.1' });

    const huge = await raw(`GET /v1/balance HTTP/1.1\r\nHost: x\r\nX-Pad: ${'a'.repeat(20_000)}\r\n\r\n`);
    expect(huge).toMatch(/^HTTP\/1\.1 431 /);
    expect(body(huge)).toEqual({ error: 'invalid_request', message: 'the request headers are too large' });

    expect((await http(`${t.url}/v1/balance`, { auth: a.auth })).status).toBe(200);
  });
});
