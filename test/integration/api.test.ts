import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QUEUE_NAMES } from '../../src/engine/queues.js';
import { http, readEvents, startTestEngine, testConfig, type TestEngine } from '../helpers/engine.js';

/** The FlashVerify v1 API over real HTTP and real Redis (api role only: jobs stay queued). */
describe('FlashVerify v1 API', () => {
  let t: TestEngine;
  let auth: string;
  let accountId: string;

  beforeAll(async () => {
    t = await startTestEngine(testConfig({ api: { defaultRateLimitPerSecond: 1000 } }), 'api');
    const a = await t.account({ balance: 1 });
    auth = a.auth;
    accountId = a.account_id;
  });
  afterAll(async () => t?.stop());

  const code = async (requestId: string): Promise<string> => {
    const enc = await t.redis.hget(t.keys.verification(requestId), 'code_enc');
    return t.sealer.open(enc!, `code:${requestId}`);
  };

  it('POST /v1/verify returns 201 with the documented body and queues a job holding only the request id', async () => {
    const res = await http(`${t.url}/v1/verify`, { auth, body: { phone_number: '+447700900000', method: 'flash_call' } });
    expect(res.status).toBe(201);
    expect(Object.keys(res.body).sort()).toEqual(
      ['code_length', 'cost', 'expires_at', 'method', 'phone_number', 'request_id', 'status'].sort(),
    );
    expect(res.body).toMatchObject({
      phone_number: '+447700900000',
      method: 'flash_call',
      status: 'sent',
      code_length: 4,
      cost: { amount: 0.004, currency: 'GBP' },
    });
    expect(res.body.request_id).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.body.expires_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    const expiresIn = Date.parse(String(res.body.expires_at)) - Date.now();
    expect(expiresIn).toBeGreaterThan(295_000);
    expect(expiresIn).toBeLessThanOrEqual(300_000);

    const queue = new Queue(QUEUE_NAMES.flash_call, { connection: t.redis, prefix: t.keys.bullPrefix() });
    const job = await queue.getJob(String(res.body.request_id));
    await queue.close();
    expect(job?.data).toEqual({ request_id: res.body.request_id });

    // The code is stored only as a MAC and a ciphertext; the number only sealed.
    const record = await t.redis.hgetall(t.keys.verification(String(res.body.request_id)));
    const c = await code(String(res.body.request_id));
    expect(Object.values(record).some((v) => v.includes(c) && v.length < 8)).toBe(false);
    expect(record.code_mac).toMatch(/^[0-9a-f]{64}$/);
    expect(record.code_enc).toMatch(/^v1\./);
    expect(JSON.stringify(record)).not.toContain('447700900000');
    const [sent] = (await readEvents(t.redis, t.keys)).filter((e) => e.request_id === res.body.request_id);
    expect(sent).toMatchObject({ event: 'verification.sent', status: 'sent', method: 'flash_call', account_id: accountId });
  });

  it('rejects bad input with the documented errors, never a 500', async () => {
    const bad = async (body: unknown, headers?: Record<string, string>) =>
      http(`${t.url}/v1/verify`, { auth, body, headers });
    expect((await bad({ phone_number: '07700900000' })).body).toMatchObject({ error: 'invalid_phone' });
    expect((await bad({ phone_number: '+44 7700 900000' })).body.error).toBe('invalid_phone');
    expect((await bad({ phone_number: '+447700900000\r\nX-Evil: 1' })).body.error).toBe('invalid_phone');
    expect((await bad({})).status).toBe(400);
    expect((await bad({ phone_number: '+447700900000', method: 'pigeon' })).body.error).toBe('invalid_request');
    expect((await bad({ phone_number: '+447700900000', code_length: 6 })).body.message).toMatch(/fixed at 4/);
    expect((await bad({ phone_number: '+447700900000', expiry_seconds: 601 })).body.error).toBe('invalid_request');
    expect((await bad({ phone_number: '+447700900000', surprise: 1 })).body.message).toMatch(/surprise/);
    const malformed = await bad('{"phone_number": ');
    expect(malformed.status).toBe(400);
    expect(malformed.body).toEqual({ error: 'invalid_request', message: 'the body is not valid JSON' });
    const wrongType = await bad('phone_number=+447700900000', { 'content-type': 'application/x-www-form-urlencoded' });
    expect(wrongType.status).toBe(400);
    expect(wrongType.body.message).toMatch(/Content-Type/);
    const huge = await bad({ phone_number: '+447700900000', pad: 'x'.repeat(100_000) });
    expect(huge.status).toBe(400);
    expect(huge.body.message).toMatch(/too large/);
    expect((await bad([1, 2])).body.error).toBe('invalid_request');
  });

  it('authenticates with Basic auth and answers 401 otherwise', async () => {
    const none = await http(`${t.url}/v1/balance`);
    expect(none.status).toBe(401);
    expect(none.body).toEqual({ error: 'unauthorized', message: 'Invalid or missing API key/secret' });
    const a = await t.account();
    const wrong = 'Basic ' + Buffer.from(`${a.api_key}:${'0'.repeat(64)}`).toString('base64');
    expect((await http(`${t.url}/v1/balance`, { auth: wrong })).status).toBe(401);
    // Regenerating the secret keeps the key and retires the old secret.
    const again = await t.accounts.regenerateSecret(a.account_id);
    expect(again.api_key).toBe(a.api_key);
    expect((await http(`${t.url}/v1/balance`, { auth: a.auth })).status).toBe(401);
    const fresh = 'Basic ' + Buffer.from(`${a.api_key}:${again.api_secret}`).toString('base64');
    expect((await http(`${t.url}/v1/balance`, { auth: fresh })).body).toEqual({ balance: { amount: 10, currency: 'GBP' } });
  });

  it('answers 402, 403 pending and 403 suspended', async () => {
    const poor = await t.account({ balance: 0.001 });
    const r402 = await http(`${t.url}/v1/verify`, { auth: poor.auth, body: { phone_number: '+447700900001' } });
    expect(r402.status).toBe(402);
    expect(r402.body.error).toBe('insufficient_balance');
    const pending = await t.account({ active: false });
    const r403 = await http(`${t.url}/v1/verify`, { auth: pending.auth, body: { phone_number: '+447700900001' } });
    expect([r403.status, r403.body.error]).toEqual([403, 'account_pending']);
    await t.accounts.setStatus(pending.account_id, 'suspended');
    const s403 = await http(`${t.url}/v1/verify`, { auth: pending.auth, body: { phone_number: '+447700900001' } });
    expect([s403.status, s403.body.error]).toEqual([403, 'account_suspended']);
  });

  it('checks codes: wrong code counts down, three wrong attempts expire it, the right code verifies (once: a retry gets the same answer)', async () => {
    const created = await http(`${t.url}/v1/verify`, { auth, body: { phone_number: '+447700900002' } });
    const id = String(created.body.request_id);
    const right = await code(id);
    const wrongCode = right === '0000' ? '1111' : '0000';
    const w1 = await http(`${t.url}/v1/verify/check`, { auth, body: { request_id: id, code: wrongCode } });
    expect([w1.status, w1.body]).toEqual([400, { error: 'invalid_code', message: 'Incorrect code', attempts_remaining: 2 }]);
    const ok = await http(`${t.url}/v1/verify/check`, { auth, body: { request_id: id, code: right } });
    expect([ok.status, ok.body]).toEqual([200, { request_id: id, status: 'verified', phone_number: '+447700900002' }]);
    // A client that lost the answer checks again: the same 200, nothing counted again (attempts, events).
    const twice = await http(`${t.url}/v1/verify/check`, { auth, body: { request_id: id, code: right } });
    expect([twice.status, twice.body]).toEqual([200, ok.body]);
    expect(await t.redis.hget(t.keys.verification(id), 'attempts')).toBe('2');
    expect((await readEvents(t.redis, t.keys)).filter((e) => e.request_id === id && e.status === 'verified')).toHaveLength(1);
    // Any other code on a verified request: it is over.
    const after = await http(`${t.url}/v1/verify/check`, { auth, body: { request_id: id, code: wrongCode } });
    expect([after.status, after.body]).toEqual([400, { error: 'verification_expired', message: 'This verification has already been completed' }]);

    const other = String((await http(`${t.url}/v1/verify`, { auth, body: { phone_number: '+447700900003' } })).body.request_id);
    const otherCode = await code(other);
    const bad = otherCode === '0000' ? '1111' : '0000';
    for (const remaining of [2, 1, 0]) {
      const r = await http(`${t.url}/v1/verify/check`, { auth, body: { request_id: other, code: bad } });
      expect(r.body).toMatchObject({ error: 'invalid_code', attempts_remaining: remaining });
    }
    const late = await http(`${t.url}/v1/verify/check`, { auth, body: { request_id: other, code: otherCode } });
    expect([late.status, late.body.error]).toEqual([400, 'verification_expired']);
    const status = await http(`${t.url}/v1/verify/${other}`, { auth });
    expect(status.body.status).toBe('expired');
  });

  it('a code as users copy it (spaces, a dash) is the code; one with other characters is refused without spending an attempt', async () => {
    const id = String((await http(`${t.url}/v1/verify`, { auth, body: { phone_number: '+447700900006', method: 'sms', code_length: 6 } })).body.request_id);
    const right = await code(id);
    for (const odd of ['12ab56', '١٢٣٤x٦', '123456;']) {
      const r = await http(`${t.url}/v1/verify/check`, { auth, body: { request_id: id, code: odd } });
      expect([r.status, r.body]).toEqual([400, { error: 'invalid_request', message: 'code must be a string of digits' }]);
    }
    expect(await t.redis.hget(t.keys.verification(id), 'attempts')).toBe('0');
    const spaced = ` ${right.slice(0, 3)} ${right.slice(3)} `;
    const ok = await http(`${t.url}/v1/verify/check`, { auth, body: { request_id: id, code: spaced } });
    expect([ok.status, ok.body.status]).toEqual([200, 'verified']);
    expect(await t.redis.hget(t.keys.verification(id), 'attempts')).toBe('1');
  });

  it('the code typed in another script\'s digits (Arabic-Indic, Persian, full-width) is the code; 11 digits are a wrong code, counted', async () => {
    const scripts = [0x0660, 0x06f0, 0xff10];
    for (const [i, zero] of scripts.entries()) {
      const id = String((await http(`${t.url}/v1/verify`, { auth, body: { phone_number: `+44770090002${i}`, method: 'sms', code_length: 6 } })).body.request_id);
      const right = await code(id);
      const wrong = await http(`${t.url}/v1/verify/check`, { auth, body: { request_id: id, code: '12345678901' } });
      expect(wrong.body).toMatchObject({ error: 'invalid_code', attempts_remaining: 2 });
      const typed = [...right].map((d) => String.fromCodePoint(zero + Number(d))).join('');
      const ok = await http(`${t.url}/v1/verify/check`, { auth, body: { request_id: id, code: typed } });
      expect([ok.status, ok.body.status]).toEqual([200, 'verified']);
    }
  });

  it('expired codes are rejected', async () => {
    const created = await http(`${t.url}/v1/verify`, { auth, body: { phone_number: '+447700900004', expiry_seconds: 1 } });
    const id = String(created.body.request_id);
    const right = await code(id);
    await new Promise((r) => setTimeout(r, 1100));
    const r = await http(`${t.url}/v1/verify/check`, { auth, body: { request_id: id, code: right } });
    expect([r.status, r.body.error]).toEqual([400, 'verification_expired']);
    expect((await http(`${t.url}/v1/verify/${id}`, { auth })).body.status).toBe('expired');
  });

  it('GET /v1/verify/{id} is 404 for unknown ids, another account\'s id and path tricks', async () => {
    const created = await http(`${t.url}/v1/verify`, { auth, body: { phone_number: '+447700900005' } });
    const stranger = await t.account();
    const r = await http(`${t.url}/v1/verify/${created.body.request_id}`, { auth: stranger.auth });
    expect([r.status, r.body]).toEqual([404, { error: 'not_found', message: 'Verification request ID not found' }]);
    for (const id of ['nope', '..%2F..%2Fetc%2Fpasswd', `${created.body.request_id}*`]) {
      expect((await http(`${t.url}/v1/verify/${id}`, { auth })).status).toBe(404);
    }
    const mine = await http(`${t.url}/v1/verify/${created.body.request_id}`, { auth });
    expect(mine.body).toMatchObject({
      request_id: created.body.request_id,
      phone_number: '+447700900005',
      method: 'flash_call',
      status: 'sent',
      cost: { amount: 0.004, currency: 'GBP' },
      verified_at: null,
      expires_at: created.body.expires_at,
    });
    expect((mine.body.status_history as { status: string }[]).map((h) => h.status)).toEqual(['sent']);
    // A UUID in upper case (as Swift's uuidString writes it) names the same request, for GET and check alike.
    const upper = String(created.body.request_id).toUpperCase();
    expect((await http(`${t.url}/v1/verify/${upper}`, { auth })).body).toMatchObject({ request_id: created.body.request_id, status: 'sent' });
    const right = await code(String(created.body.request_id));
    const checked = await http(`${t.url}/v1/verify/check`, { auth, body: { request_id: upper, code: right } });
    expect([checked.status, checked.body.request_id, checked.body.status]).toEqual([200, created.body.request_id, 'verified']);
  });

  it('carries rate-limit headers and answers 429 past the limit', async () => {
    const a = await t.account();
    await t.redis.hset(t.keys.account(a.account_id), 'rate_limit', '3');
    // Start at the beginning of a second so the window does not roll over mid-test.
    await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 5));
    const statuses: number[] = [];
    let last: Awaited<ReturnType<typeof http>> | undefined;
    for (let i = 0; i < 4; i++) {
      last = await http(`${t.url}/v1/balance`, { auth: a.auth });
      statuses.push(last.status);
      expect(last.headers.get('x-ratelimit-limit')).toBe('3');
      expect(Number(last.headers.get('x-ratelimit-reset'))).toBeGreaterThanOrEqual(Math.floor(Date.now() / 1000));
    }
    expect(statuses).toEqual([200, 200, 200, 429]);
    expect(last!.body.error).toBe('rate_limited');
    expect(last!.headers.get('x-ratelimit-remaining')).toBe('0');
    expect(last!.headers.get('retry-after')).toBe('1');
  });

  it('reports balance and usage', async () => {
    const a = await t.account({ balance: 1 });
    for (const n of ['+447700900010', '+447700900011']) {
      await http(`${t.url}/v1/verify`, { auth: a.auth, body: { phone_number: n } });
    }
    expect((await http(`${t.url}/v1/balance`, { auth: a.auth })).body).toEqual({ balance: { amount: 0.992, currency: 'GBP' } });
    const u = await http(`${t.url}/v1/usage`, { auth: a.auth });
    expect(u.body).toMatchObject({
      total_verifications: 2,
      successful: 0,
      success_rate: 0,
      total_cost: { amount: 0.008, currency: 'GBP' },
      by_method: { flash_call: { count: 2, cost: 0.008 }, voice: { count: 0, cost: 0 }, sms: { count: 0, cost: 0 } },
    });
    expect((await http(`${t.url}/v1/usage?from=2026-13-01`, { auth: a.auth })).status).toBe(400);
    // A day that does not exist is refused, not rolled over into the next month.
    for (const q of ['from=2026-02-30', 'to=2025-02-29', 'from=2026-04-31&to=2026-05-02']) {
      const r = await http(`${t.url}/v1/usage?${q}`, { auth: a.auth });
      expect([r.status, r.body.error, r.body.message]).toEqual([400, 'invalid_request', expect.stringMatching(/YYYY-MM-DD/)]);
    }
    expect((await http(`${t.url}/v1/usage?from=2024-02-29&to=2024-03-01`, { auth: a.auth })).status).toBe(200);
    // Any span: years back (more than the 400 days usage is kept) and into the future, the same totals.
    const wide = await http(`${t.url}/v1/usage?from=2019-01-01&to=2031-12-31`, { auth: a.auth });
    expect(wide.status).toBe(200);
    expect(wide.body).toMatchObject({ from: '2019-01-01', to: '2031-12-31', total_verifications: 2, total_cost: { amount: 0.008, currency: 'GBP' } });
  });

  it('usage: a success counts on the day its verification was charged, so a day never shows more successes than verifications', async () => {
    const a = await t.account({ balance: 1 });
    const created = await http(`${t.url}/v1/verify`, { auth: a.auth, body: { phone_number: '+447700900012' } });
    expect(created.status).toBe(201);
    const id = String(created.body.request_id);
    // As if it was charged just before midnight and checked after it: its charge time is yesterday's.
    const yesterday = Date.now() - 24 * 3600 * 1000;
    const rec = t.keys.verification(id);
    for (const f of ['created_at', 'last_send_at']) if (await t.redis.hexists(rec, f)) await t.redis.hset(rec, f, String(yesterday));
    const ok = await http(`${t.url}/v1/verify/check`, { auth: a.auth, body: { request_id: id, code: await code(id) } });
    expect([ok.status, ok.body.status]).toEqual([200, 'verified']);
    const day = (ms: number) => new Date(ms).toISOString().slice(0, 10);
    const usageOf = async (ms: number) => (await http(`${t.url}/v1/usage?from=${day(ms)}&to=${day(ms)}`, { auth: a.auth })).body;
    // Today holds the (real) charge and no success; the success is on the charge's day.
    expect(await usageOf(Date.now())).toMatchObject({ total_verifications: 1, successful: 0 });
    expect(await usageOf(yesterday)).toMatchObject({ successful: 1 });
    await t.redis.del(t.keys.usage(a.account_id, day(yesterday)));
  });

  it('usage: from defaults to 30 days ago and to to today (UTC), whatever to is, unless to is earlier than that', async () => {
    const a = await t.account();
    const day = 24 * 3600 * 1000;
    const today = Date.parse(`${new Date().toISOString().slice(0, 10)}T00:00:00Z`);
    const iso = (ms: number) => new Date(ms).toISOString().slice(0, 10);
    const range = async (q: string) => {
      const r = await http(`${t.url}/v1/usage${q}`, { auth: a.auth });
      expect(r.status).toBe(200);
      return [r.body.from, r.body.to];
    };
    expect(await range('')).toEqual([iso(today - 30 * day), iso(today)]);
    // A `to` within the last 30 days: from is still 30 days ago (the contract's default), not 30 days before `to`.
    expect(await range(`?to=${iso(today - 5 * day)}`)).toEqual([iso(today - 30 * day), iso(today - 5 * day)]);
    // A `to` before that: the 30 days up to it, not a range that ends before it starts.
    expect(await range('?to=2025-01-31')).toEqual(['2025-01-01', '2025-01-31']);
    expect(await range('?from=2025-01-01&to=2025-01-02')).toEqual(['2025-01-01', '2025-01-02']);
  });

  it('every /v1 answer carries rate-limit headers: a 401 and an unknown route too', async () => {
    const a = await t.account();
    // An unknown route is authenticated and counted like any other: 404 with the key's limit.
    const unknown = await http(`${t.url}/v1/nothing-here`, { auth: a.auth, body: {} });
    expect([unknown.status, unknown.body.error]).toEqual([404, 'not_found']);
    expect(unknown.headers.get('x-ratelimit-limit')).toBe(String(t.config.api.defaultRateLimitPerSecond));
    expect(Number(unknown.headers.get('x-ratelimit-remaining'))).toBeLessThan(t.config.api.defaultRateLimitPerSecond);
    // Without credentials it is a 401 like every /v1 route.
    expect((await http(`${t.url}/v1/nothing-here`)).status).toBe(401);
    // A 401 belongs to no key: its headers give the address's budget of failed logins (api.authFailures).
    const before = Number(await t.redis.get(t.keys.authFailures('ip', '127.0.0.1')));
    const denied = await http(`${t.url}/v1/balance`, { auth: 'Basic ' + Buffer.from(`${a.api_key}:${'1'.repeat(64)}`).toString('base64') });
    expect(denied.status).toBe(401);
    const lockAfter = t.config.api.authFailures.lockAfter;
    expect(denied.headers.get('x-ratelimit-limit')).toBe(String(lockAfter));
    expect(denied.headers.get('x-ratelimit-remaining')).toBe(String(Math.max(0, lockAfter - before - 1)));
    const reset = Number(denied.headers.get('x-ratelimit-reset'));
    expect(reset).toBeGreaterThan(Date.now() / 1000);
    expect(reset).toBeLessThanOrEqual(Math.ceil(Date.now() / 1000) + t.config.api.authFailures.windowSeconds);
  });

  it('never debits below zero under concurrent requests', async () => {
    const a = await t.account({ balance: 0.02 }); // exactly 5 flash calls
    const results = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        http(`${t.url}/v1/verify`, { auth: a.auth, body: { phone_number: `+4477009001${String(i).padStart(2, '0')}` } }),
      ),
    );
    expect(results.filter((r) => r.status === 201)).toHaveLength(5);
    expect(results.filter((r) => r.status === 402)).toHaveLength(7);
    expect((await t.accounts.get(a.account_id)).balance).toBe(0);
  });
});
