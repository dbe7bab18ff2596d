import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { http, startTestEngine, testConfig, type TestEngine } from '../helpers/engine.js';

const TOKEN = randomBytes(24).toString('hex');

/** The admin API over real HTTP and real Redis. */
describe('admin API (/admin/v1)', () => {
  let t: TestEngine;
  let admin: string;

  beforeAll(async () => {
    // Webhook URLs on loopback are refused unless private targets are allowed (tests only).
    t = await startTestEngine(testConfig({ admin: { token: TOKEN }, webhooks: { allowPrivate: true } }), 'api');
    admin = `${t.url}/admin/v1`;
  });
  afterAll(async () => t?.stop());

  const as = (token: string) => `Bearer ${token}`;
  const basic = (key: string, secret: string) => 'Basic ' + Buffer.from(`${key}:${secret}`).toString('base64');

  it('requires the admin token: none or a wrong one is 401 unauthorized', async () => {
    const none = await http(`${admin}/accounts`, { body: { name: 'x' } });
    expect([none.status, none.body]).toEqual([401, { error: 'unauthorized', message: 'Invalid or missing admin token' }]);
    expect(none.headers.get('www-authenticate')).toMatch(/^Bearer/);
    for (const auth of [as('wrong'), as(TOKEN.slice(0, -1)), as(TOKEN + 'x'), `Basic ${TOKEN}`, TOKEN]) {
      expect((await http(`${admin}/accounts/00000000-0000-4000-8000-000000000000`, { auth })).status).toBe(401);
    }
    // API credentials are no admin credentials.
    const a = await t.account();
    expect((await http(`${admin}/accounts/${a.account_id}`, { auth: a.auth })).status).toBe(401);
  });

  it('manages an account through its whole life', async () => {
    const auth = as(TOKEN);
    const created = await http(`${admin}/accounts`, { auth, body: { name: 'acme', balance: 2, currency: 'EUR' } });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ name: 'acme', status: 'pending', currency: 'EUR', balance: 2, webhook_url: null, rate_limit: null });
    expect(created.body.api_key).toMatch(/^[0-9a-f]{32}$/);
    expect(created.body.api_secret).toMatch(/^[0-9a-f]{64}$/);
    const id = String(created.body.account_id);
    const apiKey = String(created.body.api_key);

    // The secret is shown once: reading the account never returns it.
    const shown = await http(`${admin}/accounts/${id}`, { auth });
    expect(shown.status).toBe(200);
    expect(shown.body).toMatchObject({ account_id: id, name: 'acme', api_key: apiKey });
    expect(shown.body).not.toHaveProperty('api_secret');
    expect(JSON.stringify(shown.body)).not.toContain(String(created.body.api_secret));

    // The new credentials work on /v1; pending accounts may read but not verify.
    const v1 = basic(apiKey, String(created.body.api_secret));
    expect((await http(`${t.url}/v1/balance`, { auth: v1 })).body).toEqual({ balance: { amount: 2, currency: 'EUR' } });
    expect((await http(`${t.url}/v1/verify`, { auth: v1, body: { phone_number: '+447700900000' } })).body.error).toBe('account_pending');

    // A bodyless POST as fetch sends it with `body: ''` (Content-Type text/plain, empty) is taken as no body.
    const approved = await http(`${admin}/accounts/${id}/approve`, { auth, method: 'POST', body: '', headers: { 'content-type': 'text/plain;charset=UTF-8' } });
    expect([approved.status, approved.body.status]).toEqual([200, 'active']);
    expect((await http(`${t.url}/v1/verify`, { auth: v1, body: { phone_number: '+447700900000' } })).status).toBe(201);

    const topped = await http(`${admin}/accounts/${id}/topup`, { auth, body: { amount: 3.5 } });
    expect([topped.status, topped.body.balance]).toEqual([200, 5.5 - 0.00468]);
    // Amounts whose float times a million is not a whole number (16384.01 * 1e6) are still money with 2 decimals.
    const more = await http(`${admin}/accounts/${id}/topup`, { auth, body: { amount: 16384.01 } });
    expect([more.status, more.body.balance]).toEqual([200, 16389.51 - 0.00468]);

    const hook = await http(`${admin}/accounts/${id}/webhook`, { auth, method: 'PUT', body: { url: 'http://127.0.0.1:9/hook' } });
    expect([hook.status, hook.body.webhook_url]).toEqual([200, 'http://127.0.0.1:9/hook']);
    const cleared = await http(`${admin}/accounts/${id}/webhook`, { auth, method: 'PUT', body: { url: null } });
    expect(cleared.body.webhook_url).toBeNull();

    const regenerated = await http(`${admin}/accounts/${id}/regenerate-secret`, { auth, method: 'POST' });
    expect(regenerated.status).toBe(200);
    expect(regenerated.body.api_key).toBe(apiKey);
    expect(regenerated.body.api_secret).toMatch(/^[0-9a-f]{64}$/);
    expect((await http(`${t.url}/v1/balance`, { auth: v1 })).status).toBe(401);
    expect((await http(`${t.url}/v1/balance`, { auth: basic(apiKey, String(regenerated.body.api_secret)) })).status).toBe(200);

    const suspended = await http(`${admin}/accounts/${id}/suspend`, { auth, method: 'POST' });
    expect(suspended.body.status).toBe('suspended');
    const v1Again = basic(apiKey, String(regenerated.body.api_secret));
    expect((await http(`${t.url}/v1/verify`, { auth: v1Again, body: { phone_number: '+447700900000' } })).body.error).toBe('account_suspended');
  });

  it('sets a per-account rate limit that X-RateLimit-Limit on /v1 then shows', async () => {
    const auth = as(TOKEN);
    const a = await t.account();
    const before = await http(`${t.url}/v1/balance`, { auth: a.auth });
    expect(before.headers.get('x-ratelimit-limit')).toBe(String(t.config.api.defaultRateLimitPerSecond));

    const set = await http(`${admin}/accounts/${a.account_id}/rate-limit`, { auth, method: 'PUT', body: { requests_per_second: 37 } });
    expect([set.status, set.body.rate_limit]).toEqual([200, 37]);
    expect((await http(`${t.url}/v1/balance`, { auth: a.auth })).headers.get('x-ratelimit-limit')).toBe('37');

    const reset = await http(`${admin}/accounts/${a.account_id}/rate-limit`, { auth, method: 'PUT', body: { requests_per_second: null } });
    expect(reset.body.rate_limit).toBeNull();
    expect((await http(`${t.url}/v1/balance`, { auth: a.auth })).headers.get('x-ratelimit-limit')).toBe(
      String(t.config.api.defaultRateLimitPerSecond),
    );
  });

  it('answers 404 not_found for unknown accounts and 400 invalid_request for bad bodies', async () => {
    const auth = as(TOKEN);
    const missing = '00000000-0000-4000-8000-000000000000';
    const gone = await http(`${admin}/accounts/${missing}`, { auth });
    expect([gone.status, gone.body]).toEqual([404, { error: 'not_found', message: 'Account not found' }]);
    for (const op of ['approve', 'suspend', 'regenerate-secret']) {
      expect((await http(`${admin}/accounts/${missing}/${op}`, { auth, method: 'POST' })).status).toBe(404);
    }
    expect((await http(`${admin}/accounts/${missing}/topup`, { auth, body: { amount: 1 } })).status).toBe(404);
    expect((await http(`${admin}/accounts/${missing}/webhook`, { auth, method: 'PUT', body: { url: null } })).status).toBe(404);
    expect((await http(`${admin}/accounts/${missing}/rate-limit`, { auth, method: 'PUT', body: { requests_per_second: 5 } })).status).toBe(404);
    expect((await http(`${admin}/accounts/not-a-uuid`, { auth })).status).toBe(404);

    const a = await t.account();
    const bad = async (method: string, path: string, body: unknown) => {
      const r = await http(`${admin}${path}`, { auth, method, body });
      expect([r.status, r.body.error], `${method} ${path} ${JSON.stringify(body)}`).toEqual([400, 'invalid_request']);
      return r;
    };
    await bad('POST', '/accounts', {});
    await bad('POST', '/accounts', { name: 'x', currency: 'JPY' });
    await bad('POST', '/accounts', { name: 'x', balance: -1 });
    expect((await bad('POST', '/accounts', { name: 'x', surprise: true })).body.message).toMatch(/surprise/);
    await bad('POST', '/accounts', [1]);
    await bad('POST', '/accounts', '{"name": ');
    await bad('POST', `/accounts/${a.account_id}/topup`, { amount: 0 });
    await bad('POST', `/accounts/${a.account_id}/topup`, { amount: '5' });
    // Less than a millionth would be rounded away (0 added, or a millionth that was not asked for): refused.
    for (const amount of [1e-7, 5e-7, 1.0000001]) {
      expect((await bad('POST', `/accounts/${a.account_id}/topup`, { amount })).body.message).toMatch(/at most 6 decimal places/);
    }
    await bad('POST', '/accounts', { name: 'x', balance: 0.0000001 });
    await bad('PUT', `/accounts/${a.account_id}/webhook`, { url: 'ftp://example.com/' });
    await bad('PUT', `/accounts/${a.account_id}/webhook`, {});
    await bad('PUT', `/accounts/${a.account_id}/rate-limit`, { requests_per_second: 0 });
    await bad('PUT', `/accounts/${a.account_id}/rate-limit`, { requests_per_second: 1.5 });
    // Nothing changed.
    expect(await t.accounts.get(a.account_id)).toMatchObject({ balance: 10, webhook_url: null, rate_limit: null });
  });
});

describe('admin API without a token', () => {
  let t: TestEngine;
  beforeAll(async () => {
    t = await startTestEngine(testConfig(), 'api');
  });
  afterAll(async () => t?.stop());

  it('is off: every route answers 404 whatever the credentials', async () => {
    const a = await t.account();
    for (const auth of [undefined, 'Bearer ', `Bearer ${TOKEN}`]) {
      const r = await http(`${t.url}/admin/v1/accounts/${a.account_id}`, { auth });
      expect([r.status, r.body.error]).toEqual([404, 'not_found']);
      expect((await http(`${t.url}/admin/v1/accounts`, { auth, body: { name: 'x' } })).status).toBe(404);
    }
  });
});
