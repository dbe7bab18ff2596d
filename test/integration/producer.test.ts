import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QUEUE_NAMES } from '../../src/engine/queues.js';
import { STEP_TIMEOUT_QUEUE } from '../../src/engine/step-timer.js';
import { ApiError, FlashVerifyProducer } from '../../src/producer.js';
import { http, readEvents, startTestEngine, testConfig, type TestEngine } from '../helpers/engine.js';

/** The in-process producer against real Redis, beside an api-role engine (no workers: jobs stay queued). */
describe('FlashVerifyProducer', () => {
  let t: TestEngine;
  let producer: FlashVerifyProducer;

  beforeAll(async () => {
    t = await startTestEngine(testConfig({ api: { defaultRateLimitPerSecond: 1000 } }), 'api');
    // Connected from the pieces a service would know, not from the engine's config object.
    producer = await FlashVerifyProducer.connect({
      redisUrl: t.config.redis.url,
      prefix: t.config.redis.prefix,
      masterKey: t.config.security.masterKey,
    });
  });
  afterAll(async () => {
    await producer?.close();
    await t?.stop();
  });

  const rejection = async (p: Promise<unknown>): Promise<ApiError> => {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ApiError);
    return err as ApiError;
  };

  it('creates a verification like POST /v1/verify: same body, debited balance, a job holding only the request id', async () => {
    const a = await t.account({ balance: 1 });
    const created = await producer.createVerification({ apiKey: a.api_key, apiSecret: a.api_secret }, { phone_number: '+447700900000' });
    expect(Object.keys(created).sort()).toEqual(['code_length', 'cost', 'expires_at', 'method', 'phone_number', 'request_id', 'status']);
    expect(created).toMatchObject({
      phone_number: '+447700900000',
      method: 'flash_call',
      status: 'sent',
      code_length: 4,
      cost: { amount: 0.004, currency: 'GBP' },
    });
    expect(created.request_id).toMatch(/^[0-9a-f-]{36}$/);

    const queue = new Queue(QUEUE_NAMES.flash_call, { connection: t.redis, prefix: t.keys.bullPrefix() });
    const job = await queue.getJob(created.request_id);
    await queue.close();
    expect(job?.name).toBe('flash');
    expect(job?.data).toEqual({ request_id: created.request_id });

    expect((await t.accounts.get(a.account_id)).balance).toBe(0.996);
    // The HTTP API sees the same record: the engine can open what the producer sealed.
    const status = await http(`${t.url}/v1/verify/${created.request_id}`, { auth: a.auth });
    expect(status.body).toMatchObject({ request_id: created.request_id, phone_number: '+447700900000', status: 'sent' });
    const [sent] = (await readEvents(t.redis, t.keys)).filter((e) => e.request_id === created.request_id);
    expect(sent).toMatchObject({ event: 'verification.sent', account_id: a.account_id });
  });

  it('accepts a trusted account id instead of credentials', async () => {
    const a = await t.account({ balance: 1 });
    const created = await producer.createVerification({ accountId: a.account_id }, { phone_number: '+447700900001', expiry_seconds: 60 });
    expect(created.status).toBe('sent');
    expect(Date.parse(created.expires_at) - Date.now()).toBeLessThanOrEqual(60_000);
    expect((await t.accounts.get(a.account_id)).balance).toBe(0.996);
  });

  it('throws the API\'s errors as ApiError with the catalogue code and status', async () => {
    const a = await t.account({ balance: 1 });
    const who = { apiKey: a.api_key, apiSecret: a.api_secret };

    const badPhone = await rejection(producer.createVerification(who, { phone_number: '07700900000' }));
    expect([badPhone.code, badPhone.status]).toEqual(['invalid_phone', 400]);
    const badLength = await rejection(producer.createVerification(who, { phone_number: '+447700900000', code_length: 6 }));
    expect(badLength.code).toBe('invalid_request');
    const notHere = await rejection(producer.createVerification(who, { phone_number: '+447700900000', method: 'fax' as 'sms' }));
    expect(notHere.code).toBe('invalid_request');

    const poor = await t.account({ balance: 0.001 });
    const r402 = await rejection(producer.createVerification({ accountId: poor.account_id }, { phone_number: '+447700900000' }));
    expect([r402.code, r402.status, r402.toBody()]).toEqual([
      'insufficient_balance',
      402,
      { error: 'insufficient_balance', message: 'Your balance is too low for this request' },
    ]);

    const pending = await t.account({ active: false });
    const r403 = await rejection(producer.createVerification({ apiKey: pending.api_key, apiSecret: pending.api_secret }, { phone_number: '+447700900000' }));
    expect([r403.code, r403.status]).toEqual(['account_pending', 403]);

    const wrong = await rejection(producer.createVerification({ apiKey: a.api_key, apiSecret: '0'.repeat(64) }, { phone_number: '+447700900000' }));
    expect([wrong.code, wrong.status]).toEqual(['unauthorized', 401]);
    const unknown = await rejection(producer.createVerification({ accountId: '00000000-0000-4000-8000-000000000000' }, { phone_number: '+447700900000' }));
    expect(unknown.code).toBe('unauthorized');

    // Nothing was charged for any of the refusals.
    expect((await t.accounts.get(a.account_id)).balance).toBe(1);
    expect((await t.accounts.get(poor.account_id)).balance).toBe(0.001);
  });

  it('shares the per-key rate limit with HTTP', async () => {
    const a = await t.account({ balance: 10 });
    await t.accounts.setRateLimit(a.account_id, 2);
    const who = { accountId: a.account_id };
    // Retry at a second boundary so the window cannot roll over mid-test.
    await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 20));
    await producer.createVerification(who, { phone_number: '+447700900010' });
    await producer.createVerification(who, { phone_number: '+447700900011' });
    const limited = await rejection(producer.createVerification(who, { phone_number: '+447700900012' }));
    expect([limited.code, limited.status]).toEqual(['rate_limited', 429]);
  });

  it('counts its sends in the per-day conversion counters, with their charge (the create script): at once, no batch to wait for', async () => {
    const own = await FlashVerifyProducer.connect({ redisUrl: t.config.redis.url, prefix: t.config.redis.prefix, masterKey: t.config.security.masterKey });
    const a = await t.account({ balance: 1 });
    const day = t.keys.conversion(new Date().toISOString().slice(0, 10));
    const before = Number((await t.redis.hget(day, 'country:GB:flash_call:sent')) ?? 0);
    await own.createVerification({ accountId: a.account_id }, { phone_number: '+447700900020' });
    await own.createVerification({ accountId: a.account_id }, { phone_number: '+447700900021' });
    expect(Number(await t.redis.hget(day, 'country:GB:flash_call:sent'))).toBe(before + 2);
    await own.close();
  });

  it('a workflow gets its step-0 timer as over HTTP (so it falls back); close() right after a create leaves no enqueue intent behind', async () => {
    const own = await FlashVerifyProducer.connect({ redisUrl: t.config.redis.url, prefix: t.config.redis.prefix, masterKey: t.config.security.masterKey });
    const a = await t.account({ balance: 1 });
    const created = await own.createVerification({ accountId: a.account_id }, { phone_number: '+447700900010', workflow: [{ method: 'flash_call', timeout_seconds: 5 }, { method: 'voice' }] });
    await own.close();
    const timers = new Queue(STEP_TIMEOUT_QUEUE, { connection: t.redis, prefix: t.keys.bullPrefix() });
    const timer = await timers.getJob(`${created.request_id}-t0`);
    await timers.close();
    expect(timer?.data).toEqual({ request_id: created.request_id, step: 0 });
    expect(timer?.opts.delay).toBe(5000);
    expect(await t.redis.zscore(t.keys.unqueued(), created.request_id)).toBeNull();
  });

  it('a Redis that does not answer: connect waits redis.startupWaitMs, then fails naming it', async () => {
    const config = testConfig({ redis: { url: 'redis://127.0.0.1:9', startupWaitMs: 400 } });
    const started = Date.now();
    await expect(FlashVerifyProducer.connect({ config })).rejects.toThrow(/cannot reach Redis at redis:\/\/127\.0\.0\.1:9 .*Is redis-server running there/);
    expect(Date.now() - started).toBeGreaterThanOrEqual(350);
  });

  it('refuses to start without the engine\'s master key rather than invent one', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fv-producer-'));
    const keyFile = join(dir, 'master.key');
    const configFile = join(dir, 'c.yaml');
    writeFileSync(configFile, `security: { masterKeyFile: "${keyFile}" }\n`);
    try {
      await expect(
        FlashVerifyProducer.connect({ redisUrl: t.config.redis.url, prefix: t.config.redis.prefix, configFile }).then((p) => p.close()),
      ).rejects.toThrow(/master/);
      expect(existsSync(keyFile)).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
