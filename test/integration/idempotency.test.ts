import { createHash } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import { Idempotency } from '../../src/api/idempotency.js';
import { http, REDIS_URL, startTestEngine, testConfig, type TestEngine } from '../helpers/engine.js';
import { startServiceOnRedis } from '../helpers/service-on-redis.js';
import type { Method } from '../../src/verification/types.js';
import { VerificationService } from '../../src/verification/verification-service.js';

/** Makes a record the create script stored (`created`) 61 s old: as when the api that made it died before answering. */
async function agePendingCreate(redis: Redis, key: string): Promise<void> {
  const record = JSON.parse((await redis.get(key))!) as { state: string; at: number };
  expect(record.state).toBe('created');
  await redis.set(key, JSON.stringify({ ...record, at: record.at - 61_000 }), 'KEEPTTL');
}

/** Idempotency-Key on POST /v1/verify, over real HTTP and Redis (api role). */
describe('Idempotency-Key', () => {
  let t: TestEngine;

  beforeAll(async () => {
    // Keys, not numbers, are the subject here: several requests go to one number (the one-live rule would answer 409).
    t = await startTestEngine(testConfig({ api: { defaultRateLimitPerSecond: 1000 }, fraud: { liveVerification: 'off' } }), 'api');
  });
  afterAll(async () => t?.stop());

  const verify = (auth: string, key: string | undefined, body: unknown) =>
    http(`${t.url}/v1/verify`, { auth, body, headers: key === undefined ? {} : { 'idempotency-key': key } });

  it('replays the first response for a repeated key without a second verification or debit', async () => {
    const a = await t.account({ balance: 1 });
    const body = { phone_number: '+447700900200' };
    const first = await verify(a.auth, 'order-42/attempt-1', body);
    expect(first.status).toBe(201);
    expect(first.headers.get('idempotent-replayed')).toBeNull();
    const again = await verify(a.auth, 'order-42/attempt-1', body);
    expect(again.status).toBe(201);
    expect(again.body).toEqual(first.body);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(again.headers.get('x-ratelimit-limit')).toBe('1000');
    expect((await t.accounts.get(a.account_id)).balance).toBe(0.996);
    const usage = await http(`${t.url}/v1/usage`, { auth: a.auth });
    expect(usage.body.total_verifications).toBe(1);

    // Another key, or no key, is another verification.
    const other = await verify(a.auth, 'order-43', body);
    expect(other.body.request_id).not.toBe(first.body.request_id);
    const none = await verify(a.auth, undefined, body);
    expect(none.body.request_id).not.toBe(first.body.request_id);
    expect((await t.accounts.get(a.account_id)).balance).toBe(0.988);
  });

  it('gives concurrent duplicates the one response of the request that ran', async () => {
    const a = await t.account({ balance: 1 });
    const results = await Promise.all(
      Array.from({ length: 8 }, () => verify(a.auth, 'burst-key', { phone_number: '+447700900201' })),
    );
    expect(results.map((r) => r.status)).toEqual(Array(8).fill(201));
    expect(new Set(results.map((r) => r.body.request_id)).size).toBe(1);
    expect(results.filter((r) => r.headers.get('idempotent-replayed') === 'true')).toHaveLength(7);
    expect((await t.accounts.get(a.account_id)).balance).toBe(0.996);
  });

  it('keeps keys per account', async () => {
    const a = await t.account();
    const b = await t.account();
    const ra = await verify(a.auth, 'shared-key', { phone_number: '+447700900202' });
    const rb = await verify(b.auth, 'shared-key', { phone_number: '+447700900202' });
    expect(ra.status).toBe(201);
    expect(rb.status).toBe(201);
    expect(ra.body.request_id).not.toBe(rb.body.request_id);
  });

  it('replays a 4xx answer too, and refuses a key reused with another body', async () => {
    const a = await t.account();
    const bad = await verify(a.auth, 'bad-phone', { phone_number: '0770' });
    expect([bad.status, bad.body.error]).toEqual([400, 'invalid_phone']);
    const badAgain = await verify(a.auth, 'bad-phone', { phone_number: '0770' });
    expect([badAgain.status, badAgain.body]).toEqual([400, bad.body]);
    expect(badAgain.headers.get('idempotent-replayed')).toBe('true');

    await verify(a.auth, 'k-body', { phone_number: '+447700900203' });
    const reused = await verify(a.auth, 'k-body', { phone_number: '+447700900204' });
    expect([reused.status, reused.body.error]).toEqual([400, 'invalid_request']);
    expect(reused.body.message).toMatch(/different request body/);
  });

  it('a refusal of the moment (402) is not kept: after a top-up the same key runs and creates; the same members in another order are the same request', async () => {
    const a = await t.account({ balance: 0.001 });
    const poor = await verify(a.auth, 'k-402', { phone_number: '+447700900211', method: 'flash_call' });
    expect([poor.status, poor.body.error]).toEqual([402, 'insufficient_balance']);
    await t.accounts.topUp(a.account_id, 1);
    const paid = await verify(a.auth, 'k-402', { method: 'flash_call', phone_number: '+447700900211' });
    expect([paid.status, paid.headers.get('idempotent-replayed')]).toEqual([201, null]);
    // Another order of the same members: replayed, not refused as another body.
    const again = await verify(a.auth, 'k-402', { phone_number: '+447700900211', method: 'flash_call' });
    expect([again.status, again.body.request_id, again.headers.get('idempotent-replayed')]).toEqual([201, paid.body.request_id, 'true']);
    // The record still carries the MAC of the body as sent, which a process of the version before compares (a rolling
    // upgrade): the same retry there is replayed too, not refused as another body.
    const stored = JSON.parse((await t.redis.get(t.keys.idempotency(a.account_id, t.sealer.mac('idempotency-key', 'k-402'))))!) as { fp: string };
    expect(stored.fp).toBe(t.sealer.mac('idempotency-request', JSON.stringify({ method: 'flash_call', phone_number: '+447700900211' })));
  });

  it('a response made while Redis fails its store is still answered, and stored when Redis lets it: a retry is replayed, never run twice', async () => {
    const redis = new Redis(REDIS_URL);
    try {
      const idem = new Idempotency(redis, t.keys, t.sealer, { ttlSeconds: 60, waitMs: 2000 });
      const realSet = redis.set.bind(redis) as (...args: unknown[]) => Promise<unknown>;
      let failed = 0;
      vi.spyOn(redis, 'set').mockImplementation(((...args: unknown[]) =>
        String(args[1]).includes('"done"') && failed++ < 2 ? Promise.reject(new Error('Connection is closed.')) : realSet(...args)) as never);
      let runs = 0;
      const exec = async () => ({ status: 201, body: { request_id: `r-${++runs}` } });
      expect(await idem.run('acct-store', 'k-store', { a: 1 }, exec)).toEqual({ status: 201, body: { request_id: 'r-1' }, replayed: false });
      // The retry waits on the claim until the store lands (tried again in the background), then gets the one response.
      expect(await idem.run('acct-store', 'k-store', { a: 1 }, exec)).toEqual({ status: 201, body: { request_id: 'r-1' }, replayed: true });
      expect([runs, failed]).toEqual([1, 3]);
    } finally {
      vi.restoreAllMocks();
      redis.disconnect();
    }
  });

  it('an api process that never stores its 201 (it died just after the create) leaves the retry that 201 to replay, not a second verification', async () => {
    const a = await t.account({ balance: 1 });
    // Every api store of an Idempotency-Key response fails from here on, as when the process is gone: only what the
    // create itself wrote is there for the retry.
    const realSet = Redis.prototype.set as (...args: unknown[]) => Promise<unknown>;
    const spy = vi.spyOn(Redis.prototype, 'set').mockImplementation(function (this: Redis, ...args: unknown[]) {
      return String(args[1]).includes('"done"') ? Promise.reject(new Error('Connection is closed.')) : realSet.apply(this, args);
    } as never);
    try {
      const body = { phone_number: '+447700900212', method: 'flash_call' };
      const first = await verify(a.auth, 'k-crash', body);
      expect(first.status).toBe(201);
      // A live api would have answered by now: 60 s after the create, the record is the answer.
      await agePendingCreate(t.redis, t.keys.idempotency(a.account_id, t.sealer.mac('idempotency-key', 'k-crash')));
      const retry = await verify(a.auth, 'k-crash', body);
      expect([retry.status, retry.body, retry.headers.get('idempotent-replayed')]).toEqual([201, first.body, 'true']);
    } finally {
      spy.mockRestore();
    }
    expect((await t.accounts.get(a.account_id)).balance).toBe(0.996);
    expect((await http(`${t.url}/v1/usage`, { auth: a.auth })).body.total_verifications).toBe(1);
  });

  it('a resend (resend: true) whose api never stores its 200: the retry, once 60 s old, replays it; no second resend', async () => {
    // The one-live-request rule on (a resend needs the live request), no workers: the send is marked as rung by hand.
    const e = await startTestEngine(testConfig({ api: { defaultRateLimitPerSecond: 1000 } }), 'api');
    try {
      const a = await e.account({ balance: 1 });
      const body = { phone_number: '+447700900216', method: 'flash_call' };
      const first = await http(`${e.url}/v1/verify`, { auth: a.auth, body });
      const key = e.keys.verification(String(first.body.request_id));
      await e.redis.hset(key, 'dial_started', Date.now(), 'rang_at', Date.now(), 'outcome', 'cancelled', 'status', 'delivered');
      const resend = () => http(`${e.url}/v1/verify`, { auth: a.auth, body: { ...body, resend: true }, headers: { 'idempotency-key': 'k-resend' } });
      const realSet = Redis.prototype.set as (...args: unknown[]) => Promise<unknown>;
      const spy = vi.spyOn(Redis.prototype, 'set').mockImplementation(function (this: Redis, ...args: unknown[]) {
        return String(args[1]).includes('"done"') ? Promise.reject(new Error('Connection is closed.')) : realSet.apply(this, args);
      } as never);
      let sent: Awaited<ReturnType<typeof resend>>;
      try {
        sent = await resend();
      } finally {
        spy.mockRestore();
      }
      expect([sent.status, sent.body.sends]).toEqual([200, 2]);
      await agePendingCreate(e.redis, e.keys.idempotency(a.account_id, e.sealer.mac('idempotency-key', 'k-resend')));
      const retry = await resend();
      expect([retry.status, retry.body, retry.headers.get('idempotent-replayed')]).toEqual([200, sent.body, 'true']);
      expect(await e.redis.hget(key, 'sends')).toBe('2');
      expect((await e.accounts.get(a.account_id)).balance).toBeCloseTo(1 - 2 * 0.004, 6);
    } finally {
      await e.stop();
    }
  });

  it('the create without fraud controls (createVerification-9) stores the 201 with the request too: another api process replays it', async () => {
    const s = await startServiceOnRedis(['sms']);
    const broken = new Redis(REDIS_URL);
    try {
      const account = await new AccountStore(s.redis, s.keys, s.sealer).get(s.account.account_id);
      vi.spyOn(broken, 'set').mockImplementation(((...args: unknown[]) =>
        String(args[1]).includes('"done"') ? Promise.reject(new Error('Connection is closed.')) : (s.redis.set as (...a: unknown[]) => Promise<unknown>)(...args)) as never);
      const dying = new Idempotency(broken, s.keys, s.sealer, { ttlSeconds: 60, waitMs: 200 });
      const other = new Idempotency(s.redis, s.keys, s.sealer, { ttlSeconds: 60, waitMs: 200 });
      const body = { phone_number: '+447700900213', method: 'sms' };
      const first = await dying.run(s.account.account_id, 'k-plain', body, async (claim) => ({ status: 201, body: await s.service.create(account, { ...body }, claim) }));
      let ranAgain = false;
      const again = async () =>
        other.run(s.account.account_id, 'k-plain', body, async () => {
          ranAgain = true;
          return { status: 201, body: {} };
        });
      // Within 60 s the first api may still be answering (a 503 if its job could not be queued): wait, then "in progress".
      await expect(again()).rejects.toMatchObject({ status: 503, message: expect.stringMatching(/still in progress/) });
      await agePendingCreate(s.redis, s.keys.idempotency(s.account.account_id, s.sealer.mac('idempotency-key', 'k-plain')));
      const replay = await again();
      expect([replay.status, replay.body, replay.replayed, ranAgain]).toEqual([201, first.body, true, false]);
      expect(await s.usage('sms')).toBe(1);
    } finally {
      vi.restoreAllMocks();
      broken.disconnect();
      await s.stop();
    }
  });

  it('a duplicate arriving while the create runs never replays a 201 its api then takes back (503: the job could not be queued)', async () => {
    const s = await startServiceOnRedis(['sms']);
    try {
      const account = await new AccountStore(s.redis, s.keys, s.sealer).get(s.account.account_id);
      let fail = true;
      const slowQueue = { enqueue: async () => (await new Promise((r) => setTimeout(r, 300)), fail ? Promise.reject(new Error('queue down')) : undefined) };
      const service = new VerificationService(s.redis, s.keys, s.sealer, s.config, slowQueue, s.logger, new Set<Method>(['sms']));
      const idem = new Idempotency(s.redis, s.keys, s.sealer, { ttlSeconds: 60, waitMs: 2000 });
      const body = { phone_number: '+447700900214', method: 'sms' };
      const run = () => idem.run(s.account.account_id, 'k-race', body, async (claim) => ({ status: 201, body: await service.create(account, { ...body }, claim) }));
      const first = run();
      await new Promise((r) => setTimeout(r, 100));
      const second = run();
      await expect(first).rejects.toMatchObject({ status: 503 });
      // It waited for the first, which answered 503 and let the key go; it ran the create itself, and the queue failed it too.
      await expect(second).rejects.toMatchObject({ status: 503 });
      fail = false;
      const third = await run();
      expect([third.status, third.replayed]).toEqual([201, false]);
    } finally {
      await s.stop();
    }
  });

  it('answers 400 invalid_request for a key that is empty, too long or not printable ASCII', async () => {
    const a = await t.account();
    for (const key of ['', 'x'.repeat(256), 'caf\u00e9']) {
      const r = await verify(a.auth, key, { phone_number: '+447700900205' });
      expect([r.status, r.body.error], JSON.stringify(key)).toEqual([400, 'invalid_request']);
    }
    expect((await verify(a.auth, 'x'.repeat(255), { phone_number: '+447700900205' })).status).toBe(201);
    expect((await verify(a.auth, ' ~!"#$%&()*+,-./:;<=>?@[\\]^_`{|}', { phone_number: '+447700900205' })).status).toBe(201);
    expect((await t.accounts.get(a.account_id)).balance).toBe(9.992);
  });

  it('still replays a response kept before responses were sealed (plain record under the SHA-256 name), once', async () => {
    const a = await t.account({ balance: 1 });
    const body = { phone_number: '+447700900206' };
    const sha = (x: string) => createHash('sha256').update(x).digest('hex');
    const old = { status: 201, body: { request_id: 'kept-from-before', phone_number: '+447700900206', status: 'sent' } };
    await t.redis.set(t.keys.idempotency(a.account_id, sha('upgrade-1')), JSON.stringify({ state: 'done', fp: sha(JSON.stringify(body)), ...old }), 'EX', 60);
    const replay = await verify(a.auth, 'upgrade-1', body);
    expect([replay.status, replay.body, replay.headers.get('idempotent-replayed')]).toEqual([201, old.body, 'true']);
    expect((await t.accounts.get(a.account_id)).balance).toBe(1); // nothing ran, nothing debited
    // Taken over under the new (MAC) name: the plain name is gone.
    expect(await t.redis.exists(t.keys.idempotency(a.account_id, sha('upgrade-1')))).toBe(0);
    expect((await verify(a.auth, 'upgrade-1', body)).body).toEqual(old.body);
  });
});
