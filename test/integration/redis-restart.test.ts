import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { http, startTestEngine, testConfig, waitFor } from '../helpers/engine.js';
import { engineCluster, invitesPerDestination, type EngineCluster } from '../helpers/engine-process.js';
import { ownRedis, ownSentinel, type OwnRedis, type OwnSentinel } from '../helpers/redis-server.js';
import { startSippUas, type SippUas } from '../helpers/sipp.js';
import { smscEntry, startSmsc } from '../helpers/smsc.js';
import { Receiver } from '../helpers/webhook-receiver.js';
import { AccountStore } from '../../src/accounts/account-store.js';

/**
 * Redis killed with SIGKILL under load and started again on the same port
 * and AOF directory (appendfsync always). The engine (api and worker as
 * separate processes) reconnects by itself; while Redis is down the API
 * answers 503 `service_unavailable` at once instead of hanging; every
 * verification it accepted (201) before or after ends delivered or failed,
 * and no number gets a second INVITE (SIPp's message log).
 */
let redis: OwnRedis | undefined;
let cluster: EngineCluster | undefined;
let uas: SippUas | undefined;
afterEach(async () => {
  await uas?.stop();
  await cluster?.cleanup();
  await redis?.cleanup();
  uas = cluster = redis = undefined;
});

describe('Redis restarted under load', { timeout: 60_000 }, () => {
  it('503 while down, accepts again when back, nothing accepted is lost', async () => {
    redis = await ownRedis();
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 200, maxLifetimeMs: 55_000 });
    cluster = await engineCluster(
      {
        flash: { ringMs: 200 },
        api: { defaultRateLimitPerSecond: 1000 },
        worker: { lockDurationMs: 3000, stalledIntervalMs: 1000 },
        events: { claimIdleMs: 1000 },
        numbers: { cliCooldownSeconds: 0 },
        sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] },
      },
      { redisUrl: redis.url },
    );
    const processes = [await cluster.start('api'), await cluster.start('worker')];
    const { auth } = await cluster.account(100);
    const accepted: string[] = [];
    const phoneOf = new Map<string, string>();
    const refused: string[] = [];
    let n = 0;
    const send = async () => {
      const t0 = performance.now();
      const phone = `+4477009${String(10_000 + n++).slice(1)}`;
      const r = await http(`${cluster!.httpUrl}/v1/verify`, { auth, body: { phone_number: phone } });
      if (r.status === 201) {
        accepted.push(String(r.body.request_id));
        phoneOf.set(String(r.body.request_id), phone);
      } else refused.push(phone);
      return { ...r, ms: performance.now() - t0 };
    };

    // Load before the crash.
    for (let i = 0; i < 30; i++) expect((await send()).status).toBe(201);
    const queueDepth = /^flashverify_queue_jobs\{queue="flash",state="waiting"\} \d+$/m;
    expect(await (await fetch(`${cluster.httpUrl}/metrics`)).text()).toMatch(queueDepth);

    await redis.kill();
    // Down: every request answered 503 service_unavailable, promptly.
    const down: { status: number; error: unknown; ms: number }[] = [];
    for (let i = 0; i < 10; i++) {
      const r = await send();
      down.push({ status: r.status, error: r.body.error, ms: r.ms });
    }
    for (const d of down) expect(d).toMatchObject({ status: 503, error: 'service_unavailable' });
    expect(Math.max(...down.map((d) => d.ms))).toBeLessThan(2000);
    // Said at most once per 5 s, with the count, at warn and without a stack: not an error line per request.
    const failedLines = processes[0]!.output().split('\n').filter((l) => l.includes('"msg":"request failed'));
    expect(failedLines.length).toBeGreaterThan(0);
    expect(failedLines.length).toBeLessThan(down.length);
    for (const l of failedLines) expect(l).toMatch(/"level":40,.*"more_since_last_line":\d+.*"msg":"request failed: Redis unavailable \(503 service_unavailable\)"/);
    expect(failedLines.join('')).not.toMatch(/"stack"/);
    // Prometheus still gets the process's series while Redis is down (the queue depths keep their last values),
    // within the scrape's wait for Redis, not never; /readyz says Redis is down.
    for (const url of [`${cluster.httpUrl}/metrics`, `${cluster.httpUrl}/readyz`]) {
      const t0 = performance.now();
      const r = await fetch(url, { signal: AbortSignal.timeout(10_000) });
      const text = await r.text();
      expect(performance.now() - t0).toBeLessThan(3000);
      if (url.endsWith('/metrics')) {
        expect(r.status).toBe(200);
        expect(text).toMatch(queueDepth);
        expect(text).toMatch(/^flashverify_api_shed_total \d+$/m);
      } else {
        expect([r.status, JSON.parse(text).checks.redis]).toEqual([503, false]);
      }
    }

    await redis.start();
    // Back: the engine reconnects by itself and accepts again.
    const back = performance.now();
    await waitFor(async () => (await send()).status === 201, 15_000, 100);
    expect(performance.now() - back).toBeLessThan(10_000);
    for (let i = 0; i < 30; i++) expect((await send()).status).toBe(201);

    // Nothing accepted is lost: every 201 (before and after) ends delivered or failed with a reason.
    const records = new Map<string, Record<string, string>>();
    await waitFor(
      async () => {
        for (const id of accepted) records.set(id, await cluster!.redis.hgetall(cluster!.keys.verification(id)));
        return [...records.values()].every((r) => r.status === 'delivered' || r.status === 'failed');
      },
      30_000,
      250,
    ).catch(() => {
      throw new Error(`not settled: ${[...records].filter(([, r]) => r.status !== 'delivered' && r.status !== 'failed').map(([id, r]) => `${id}=${r.status}`).join(' ')}`);
    });
    expect(accepted.length).toBeGreaterThanOrEqual(61);
    for (const [id, r] of records) if (r.status === 'failed') expect(r.failure_reason, id).toBeTruthy();
    const delivered = [...records.values()].filter((r) => r.status === 'delivered').length;
    expect(delivered).toBeGreaterThanOrEqual(accepted.length - 2);

    // Nobody called twice across the crash: at most one INVITE transaction per number (retransmissions count once),
    // exactly one for every delivered request, and none for a request that was refused with 503.
    const invites = invitesPerDestination(uas.messages());
    for (const [user, calls] of invites) expect([user, calls.size]).toEqual([user, 1]);
    for (const [id, r] of records) if (r.status === 'delivered') expect(invites.get(phoneOf.get(id)!)?.size, id).toBe(1);
    for (const phone of refused) expect(invites.has(phone), phone).toBe(false);

    // Every line either process wrote is a JSON log line: nothing printed around the logger (BullMQ writes each of
    // its queues' connection errors to stderr unless the queue has an error listener: tens of lines a second).
    for (const p of processes) {
      const stray = p.output().split('\n').filter((line) => line.trim() && !line.startsWith('{'));
      expect([p.role, stray.slice(0, 5)]).toEqual([p.role, []]);
    }
  });
});

/**
 * Redis full: `maxmemory` reached under `noeviction`, so it refuses every write with an OOM error while reads and
 * PING still work. The api answers 503 `service_unavailable` (retry later), not 500, and writes nothing; the outcome
 * of a call that ends while Redis is full is written once Redis has room again (delivery writes wait it out).
 */
describe('Redis full (maxmemory, noeviction)', { timeout: 60_000 }, () => {
  it('503 for new requests, nothing written; a call ringing meanwhile is recorded once Redis has room', async () => {
    redis = await ownRedis();
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 10, maxLifetimeMs: 55_000 });
    cluster = await engineCluster(
      {
        flash: { ringMs: 3000 },
        worker: { lockDurationMs: 3000, stalledIntervalMs: 1000 },
        events: { claimIdleMs: 1000 },
        sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] },
      },
      { redisUrl: redis.url },
    );
    const processes = [await cluster.start('api'), await cluster.start('worker')];
    const { auth, account_id } = await cluster.account(100);
    const before = await http(`${cluster.httpUrl}/v1/verify`, { auth, body: { phone_number: '+447700900401' } });
    expect(before.status).toBe(201);
    const ringing = String(before.body.request_id);
    await waitFor(async () => uas!.sent().some((m) => m.status === 180), 10_000, 25);

    // Full now: below what it already uses.
    const used = Number(/used_memory:(\d+)/.exec(await cluster.redis.info('memory'))![1]);
    await cluster.redis.config('SET', 'maxmemory-policy', 'noeviction');
    await cluster.redis.config('SET', 'maxmemory', String(Math.floor(used / 2)));
    const balance = await cluster.redis.hget(cluster.keys.account(account_id), 'balance');
    try {
      const refused = await http(`${cluster.httpUrl}/v1/verify`, { auth, body: { phone_number: '+447700900402' } });
      expect(refused.status).toBe(503);
      expect(refused.body.error).toBe('service_unavailable');
      // Not ready either: Redis answers PING, but takes no write.
      const notReady = await http(`${cluster.httpUrl}/readyz`);
      expect([notReady.status, (notReady.body as { checks: Record<string, boolean> }).checks.redis]).toEqual([503, false]);
      // Nothing charged, no job.
      expect(await cluster.redis.hget(cluster.keys.account(account_id), 'balance')).toBe(balance);
      // The ringing call is CANCELled after its 3 s ring while Redis is still full.
      await waitFor(async () => uas!.requests('CANCEL').length === 1, 10_000, 50);
      await new Promise((r) => setTimeout(r, 1500));
    } finally {
      await cluster.redis.config('SET', 'maxmemory', '0');
    }
    // Room again: the call's outcome, refused while Redis was full, reaches its record; it was dialled once.
    await waitFor(async () => (await cluster!.redis.hget(cluster!.keys.verification(ringing), 'outcome')) === 'cancelled', 20_000, 100);
    // Its `delivered` status comes from the status consumer (the event), which may apply it after the outcome is written.
    await waitFor(async () => (await cluster!.redis.hget(cluster!.keys.verification(ringing), 'status')) === 'delivered', 10_000, 100);
    expect(await cluster.redis.hmget(cluster.keys.verification(ringing), 'status', 'final_sip_status')).toEqual(['delivered', '487']);
    const worker = processes[1]!.output();
    expect(worker).toMatch(/"err":"OOM command not allowed[^"]*","msg":"redis refuses writes for now; delivery writes wait and retry"/);
    expect(worker).toContain('redis takes writes again');
    const after = await http(`${cluster.httpUrl}/v1/verify`, { auth, body: { phone_number: '+447700900403' } });
    expect(after.status).toBe(201);
    expect((await http(`${cluster.httpUrl}/readyz`)).status).toBe(200);
    for (const [, calls] of invitesPerDestination(uas.messages())) expect(calls.size).toBe(1);
    for (const p of processes) expect(p.child.exitCode).toBeNull();
  });
});

describe('Redis full while a webhook is being sent', { timeout: 60_000 }, () => {
  it('its bookkeeping is written once Redis has room, so the request\'s next webhook goes then, not after webhooks.orderMaxWaitMs', async () => {
    redis = await ownRedis();
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 2, maxLifetimeMs: 55_000 });
    const receiver = new Receiver();
    const hookUrl = await receiver.start();
    try {
      cluster = await engineCluster(
        {
          flash: { ringMs: 500 },
          events: { claimIdleMs: 1000 },
          webhooks: { allowPrivate: true, orderMaxWaitMs: 45_000 },
          sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] },
        },
        { redisUrl: redis.url },
      );
      const proc = await cluster.start('all');
      const { auth, account_id, api_secret } = await cluster.account(100);
      receiver.secret = api_secret;
      await new AccountStore(cluster.redis, cluster.keys, cluster.sealer, { allowPrivateWebhooks: true }).setWebhook(account_id, hookUrl);
      // The `sent` webhook is answered 300 ms late; as it arrives, Redis is made full (for 5 s: longer than the
      // delivery's own retries of its bookkeeping, about 3 s).
      let full: Promise<void> | undefined;
      const own = cluster.redis;
      receiver.delayMs = 300;
      receiver.onRequest = (r) => {
        if (r.json['event'] !== 'verification.sent' || full) return;
        full = (async () => {
          const used = Number(/used_memory:(\d+)/.exec(await own.info('memory'))![1]);
          await own.config('SET', 'maxmemory-policy', 'noeviction');
          await own.config('SET', 'maxmemory', String(Math.floor(used / 2)));
        })();
      };
      const created = await http(`${cluster.httpUrl}/v1/verify`, { auth, body: { phone_number: '+447700900431' } });
      expect(created.status).toBe(201);
      await waitFor(async () => (full ? true : undefined), 10_000, 20);
      await full;
      await new Promise((r) => setTimeout(r, 5000));
      await own.config('SET', 'maxmemory', '0');
      const roomAt = Date.now();
      await waitFor(async () => (receiver.received.some((x) => x.json['event'] === 'verification.delivered') ? true : undefined), 15_000, 50);
      expect(Date.now() - roomAt).toBeLessThan(10_000);
      expect(receiver.received.map((x) => x.json['event'])).toEqual(['verification.sent', 'verification.delivered']);
      expect(proc.output()).toContain('written in the background, not sent again');
    } finally {
      await cluster?.redis.config('SET', 'maxmemory', '0').catch(() => undefined);
      await receiver.stop();
    }
  });
});

describe('Redis full while an SMS\'s submit_sm_resp is on its way', { timeout: 60_000 }, () => {
  it('the SMS worker\'s writes wait for room: the message the SMSC took ends delivered, not failed', async () => {
    redis = await ownRedis();
    const smsc = await startSmsc({ maxLifetimeMs: 55_000 });
    try {
      await smsc.set({ respDelayMs: 1500 });
      const config = testConfig({ sms: { enabled: true, smscs: [smscEntry(smsc)], unconfirmedDeadlineMs: 20_000 } } as Parameters<typeof testConfig>[0]);
      const t = await startTestEngine({ ...config, redis: { ...config.redis, url: redis.url } });
      try {
        await waitFor(async () => ((await smsc.state()).sessions.some((x) => x.bound) ? true : undefined), 5000);
        const account = await t.account({ balance: 1 });
        const created = await http(`${t.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900451', method: 'sms', code_length: 6 } });
        expect(created.status).toBe(201);
        const id = String(created.body.request_id);
        await waitFor(async () => ((await smsc.state()).submits.length === 1 ? true : undefined), 5000, 20);
        // Full from before the submit_sm_resp comes until after it.
        const used = Number(/used_memory:(\d+)/.exec(await t.redis.info('memory'))![1]);
        await t.redis.config('SET', 'maxmemory-policy', 'noeviction');
        await t.redis.config('SET', 'maxmemory', String(Math.floor(used / 2)));
        try {
          await new Promise((r) => setTimeout(r, 3000));
        } finally {
          await t.redis.config('SET', 'maxmemory', '0');
        }
        await waitFor(async () => ((await t.redis.hget(t.keys.verification(id), 'status')) === 'delivered' ? true : undefined), 15_000, 100);
        expect(t.logs.join('\n')).not.toMatch(/job_failed/);
        expect((await smsc.state()).submits).toHaveLength(1);
      } finally {
        await t.stop();
      }
    } finally {
      await smsc.stop();
    }
  });
});

describe('Redis hung (SIGSTOP)', { timeout: 60_000 }, () => {
  it('new requests get 503 once redis.stallAfterMs passes without a PING answered; one sent before waits and is answered 201 once Redis goes on', async () => {
    redis = await ownRedis();
    cluster = await engineCluster({ redis: { stallAfterMs: 1000 } }, { redisUrl: redis.url });
    const api = await cluster.start('api');
    const { auth } = await cluster.account(100);
    expect((await http(`${cluster.httpUrl}/v1/verify`, { auth, body: { phone_number: '+447700900421' } })).status).toBe(201);
    redis.pause();
    let waiting: Promise<{ status: number }> | undefined;
    try {
      // Sent as Redis stops: it waits for Redis (its commands are on the wire), it is not answered 503.
      waiting = http(`${cluster.httpUrl}/v1/verify`, { auth, body: { phone_number: '+447700900424' } });
      await waitFor(async () => (api.output().includes('redis is not answering') ? true : undefined), 5000, 50);
      const started = Date.now();
      const hung = await http(`${cluster.httpUrl}/v1/verify`, { auth, body: { phone_number: '+447700900422' } });
      expect([hung.status, hung.body.error, hung.headers.get('retry-after')]).toEqual([503, 'service_unavailable', '1']);
      expect(Date.now() - started).toBeLessThan(500);
    } finally {
      redis.resume();
    }
    expect((await waiting!).status).toBe(201);
    await waitFor(async () => ((await http(`${cluster!.httpUrl}/v1/verify`, { auth, body: { phone_number: '+447700900423' } })).status === 201 ? true : undefined), 10_000, 200);
    expect(api.output()).toContain('redis answers again');
    // The 503 created nothing: three requests in all.
    expect((await cluster.redis.keys(cluster.keys.verification('*'))).length).toBe(3);
    expect(api.child.exitCode).toBeNull();
  });
});

describe('Redis full while flash calls wait for a trunk channel', { timeout: 60_000 }, () => {
  it('their writes before the INVITE (the CLI\'s range, its cooldown) wait for room: each call placed once, none failed', async () => {
    redis = await ownRedis();
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 10, maxLifetimeMs: 55_000 });
    cluster = await engineCluster(
      {
        flash: { ringMs: 700 },
        events: { claimIdleMs: 1000 },
        sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri, maxCalls: 1 }] },
      },
      { redisUrl: redis.url },
    );
    const processes = [await cluster.start('api'), await cluster.start('worker')];
    const { auth } = await cluster.account(100);
    const phones = ['+447700900411', '+447700900412', '+447700900413', '+447700900414'];
    const ids: string[] = [];
    for (const phone of phones) {
      const r = await http(`${cluster.httpUrl}/v1/verify`, { auth, body: { phone_number: phone } });
      expect(r.status).toBe(201);
      ids.push(String(r.body.request_id));
    }
    // One call rings (one channel); the others are claimed and wait for it. Then Redis is full for 3 s.
    await waitFor(async () => uas!.sent().some((m) => m.status === 180), 10_000, 25);
    const used = Number(/used_memory:(\d+)/.exec(await cluster.redis.info('memory'))![1]);
    await cluster.redis.config('SET', 'maxmemory-policy', 'noeviction');
    await cluster.redis.config('SET', 'maxmemory', String(Math.floor(used / 2)));
    try {
      await new Promise((r) => setTimeout(r, 3000));
    } finally {
      await cluster.redis.config('SET', 'maxmemory', '0');
    }
    for (const id of ids) {
      await waitFor(async () => ((await cluster!.redis.hget(cluster!.keys.verification(id), 'status')) === 'delivered' ? true : undefined), 20_000, 100);
    }
    const dialled = invitesPerDestination(uas.messages());
    expect(dialled.size).toBe(phones.length);
    for (const [, calls] of dialled) expect(calls.size).toBe(1);
    expect(processes[1]!.output()).not.toMatch(/job_failed/);
    // BullMQ fetches again at once when Redis refuses its fetch: paused a while instead, and logged once per 5 s.
    const refusedFetches = processes[1]!.output().split('\n').filter((l) => l.includes('worker error') && l.includes('OOM'));
    expect(refusedFetches.length).toBeLessThanOrEqual(20);
    for (const p of processes) expect(p.child.exitCode).toBeNull();
  });
});

/**
 * A primary/replica failover behind one address (a virtual IP, or a managed Redis's primary endpoint): the old
 * primary becomes a replica and stays up, so the engine's open connections to it are refused with READONLY, while
 * new connections to the address reach the new primary. Here a TCP proxy on loopback is "the address".
 */
describe('Redis failover behind one address', { timeout: 60_000 }, () => {
  it('the api reconnects on READONLY and takes requests again on the new primary', async () => {
    redis = await ownRedis();
    const second = await ownRedis();
    let target = redis.port;
    const held = new Set<Socket>();
    const proxy = createServer((client) => {
      const upstream = connect(target, '127.0.0.1');
      for (const s of [client, upstream]) {
        held.add(s);
        s.on('close', () => held.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
    const oldPrimary = new Redis(redis.url);
    const newPrimary = new Redis(second.url);
    try {
      cluster = await engineCluster({}, { redisUrl: `redis://127.0.0.1:${(proxy.address() as AddressInfo).port}` });
      await cluster.start('api');
      const { auth } = await cluster.account(100);
      expect((await http(`${cluster.httpUrl}/v1/verify`, { auth, body: { phone_number: '+447700900501' } })).status).toBe(201);

      // The failover: the second server copies the first, is promoted, the first follows it, and the address moves.
      await newPrimary.replicaof('127.0.0.1', String(redis.port));
      await waitFor(async () => /master_link_status:up/.test(await newPrimary.info('replication')), 10_000, 50);
      await waitFor(async () => (await newPrimary.dbsize()) === (await oldPrimary.dbsize()), 10_000, 50);
      await newPrimary.replicaof('NO', 'ONE');
      await oldPrimary.replicaof('127.0.0.1', String(second.port));
      target = second.port;

      // The api's connections still lead to the old primary, now a replica: the first write is refused with READONLY.
      const after = await http(`${cluster.httpUrl}/v1/verify`, { auth, body: { phone_number: '+447700900502' } });
      expect(after.status).toBe(201);
      expect(await newPrimary.exists(cluster.keys.verification(String(after.body.request_id)))).toBe(1);
    } finally {
      oldPrimary.disconnect();
      newPrimary.disconnect();
      proxy.close();
      for (const s of held) s.destroy();
      await cluster?.cleanup();
      cluster = undefined;
      await second.cleanup();
    }
  });
});

/** The test's own clients: the Sentinel's failover resets their connections now and then; nothing to report. */
function quiet(c: Redis): Redis {
  c.on('error', () => undefined);
  return c;
}

/** Redis Sentinel (`redis.url: sentinel://…/<master name>`): a failover the Sentinel runs is followed by the engine. */
describe('Redis Sentinel failover', { timeout: 60_000 }, () => {
  it('the api and the worker find the master through the Sentinel, and the new master after a failover', async () => {
    redis = await ownRedis();
    const replica = await ownRedis();
    const toReplica = quiet(new Redis(replica.url));
    let sentinel: OwnSentinel | undefined;
    try {
      await toReplica.replicaof('127.0.0.1', String(redis.port));
      await waitFor(async () => /master_link_status:up/.test(await toReplica.info('replication')), 10_000, 50);
      sentinel = await ownSentinel('fvmaster', redis.port, 1);
      uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 10, maxLifetimeMs: 55_000 });
      cluster = await engineCluster(
        { flash: { ringMs: 200 }, sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] } },
        { redisUrl: sentinel.url },
      );
      await cluster.start('api');
      await cluster.start('worker');
      const { auth } = await cluster.account(100);
      const before = await http(`${cluster.httpUrl}/v1/verify`, { auth, body: { phone_number: '+447700900601' } });
      expect(before.status).toBe(201);
      // The worker takes its job through the Sentinel's master too, and the call's events reach the record.
      const status = async (conn: Redis, id: unknown) => conn.hget(cluster!.keys.verification(String(id)), 'status');
      const toMaster0 = quiet(new Redis(redis.url));
      await waitFor(async () => (await status(toMaster0, before.body.request_id)) === 'delivered', 15_000, 100);
      toMaster0.disconnect();

      // Replicated before the failover (Redis replicates asynchronously: what a master takes after that is the
      // failover's to lose, as with any client).
      const toMaster = quiet(new Redis(redis.url));
      expect(await toMaster.wait(1, 5000)).toBe(1);
      toMaster.disconnect();
      const watcher = quiet(new Redis({ host: '127.0.0.1', port: sentinel.port }));
      const control = quiet(new Redis({ host: '127.0.0.1', port: sentinel.port }));
      try {
        const switched = new Promise<void>((r) => watcher.on('message', () => r()));
        await watcher.subscribe('+switch-master');
        await control.call('SENTINEL', 'FAILOVER', 'fvmaster');
        // Sentinel announces the new master; the engine's connections hear it too (and reconnect).
        await switched;
      } finally {
        watcher.disconnect();
        control.disconnect();
      }
      // And turns the old one into a replica of it (within its 10 s INFO period): from then on a write that would
      // still reach the old one is refused (READONLY), never taken and lost.
      const toOld = quiet(new Redis(redis.url));
      try {
        await waitFor(async () => (await toOld.role())[0] === 'slave', 20_000, 100);
      } finally {
        toOld.disconnect();
      }
      // The api follows: a request or two may meet the switch (503), then they are taken on the new master.
      let after: Awaited<ReturnType<typeof http>> | undefined;
      await waitFor(async () => (after = await http(`${cluster!.httpUrl}/v1/verify`, { auth, body: { phone_number: '+447700900602' } })).status === 201, 15_000, 200);
      expect(await toReplica.exists(cluster.keys.verification(String(before.body.request_id)))).toBe(1);
      // Its call placed by the worker, whose connections (BullMQ's blocking one too) followed the failover.
      await waitFor(async () => (await status(toReplica, after!.body.request_id)) === 'delivered', 20_000, 100);
      for (const [, calls] of invitesPerDestination(uas.messages())) expect(calls.size).toBe(1);
    } finally {
      toReplica.disconnect();
      await cluster?.cleanup();
      cluster = undefined;
      await sentinel?.cleanup();
      await replica.cleanup();
    }
  });
});
