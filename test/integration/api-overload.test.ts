import { request } from 'node:http';
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
    t = await startTestEngine(testConfig({ redis: { url: own.url }, api: { maxInFlight: 2, authCacheMs: 0 } }), 'api');
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
    await waitFor(async () => (await metric('flashverify_api_requests_in_flight')) === 0);
    // Both places free again: two at once go through.
    const after = await Promise.all([1, 2].map(() => http(`${t.url}/v1/balance`, { auth: a.auth })));
    expect(after.map((r) => r.status)).toEqual([200, 200]);
  });
});
