import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { DeepPartial } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { AccountStore } from '../../src/accounts/account-store.js';
import { scripts } from '../../src/store/scripts.js';
import { utcDay } from '../../src/verification/types.js';
import { http, readEvents, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { engineCluster, type EngineCluster } from '../helpers/engine-process.js';
import { startRtpReceiver, type RtpReceiver } from '../helpers/rtp-receiver.js';
import { findFreePort, startSippUas, type SippUas } from '../helpers/sipp.js';
import { smscEntry, startSmsc, type TestSmsc } from '../helpers/smsc.js';
import { Receiver } from '../helpers/webhook-receiver.js';

/**
 * Fallback workflows (issue 6, "Workflows"): one request, steps tried in
 * order, each with its own code and cost; the next step starts from the
 * events stream (workflow advancer), exactly once, also across a restart.
 * Far ends: SIPp (flash and voice) and the test SMSC, over loopback.
 */
const T1 = 50;
const PHONE = '+447700900123';
// config/default.yaml prices (GBP): flash 0.004, voice 0.02, sms 0.03.
const PRICE = { flash_call: 0.004, voice: 0.02, sms: 0.03 };

let smsc: TestSmsc;
const hooks = new Receiver();
let hookUrl: string;
let engine: TestEngine | undefined;
let uas: SippUas | undefined;
let rtp: RtpReceiver | undefined;
let cluster: EngineCluster | undefined;

beforeAll(async () => {
  smsc = await startSmsc({ maxLifetimeMs: 90_000 });
  hookUrl = await hooks.start();
});
afterAll(async () => {
  await smsc?.stop();
  await hooks.stop();
});
afterEach(async () => {
  await uas?.stop();
  await engine?.stop();
  await cluster?.cleanup();
  await rtp?.close();
  await smsc.reset();
  uas = engine = rtp = cluster = undefined;
});

function config(overrides: DeepPartial<Config> = {}): Readonly<Config> {
  return testConfig({
    api: { defaultRateLimitPerSecond: 1000 },
    webhooks: { allowPrivate: true, attempts: 3, backoffMs: 100, orderPollMs: 50 },
    flash: { ringMs: 300, ringingTimeoutMs: 3000 },
    voice: { answerTimeoutMs: 1000 },
    worker: { shutdownGraceMs: 2000 },
    verification: { minStepTimeoutSeconds: 1 },
    sip: { timers: { t1Ms: T1, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas!.uri }] },
    ...overrides,
  });
}

async function create(t: TestEngine, auth: string, body: Record<string, unknown>): Promise<{ status: number; body: Record<string, unknown> }> {
  return http(`${t.url}/v1/verify`, { auth, body: { phone_number: PHONE, ...body } });
}

/** The code of the current step, as the worker would open it. */
async function currentCode(t: TestEngine, id: string): Promise<string> {
  return t.sealer.open((await t.redis.hget(t.keys.verification(id), 'code_enc'))!, `code:${id}`);
}

async function waitStep(t: TestEngine, id: string, step: number, timeoutMs = 15_000): Promise<Record<string, string>> {
  return waitFor(async () => {
    const h = await t.redis.hgetall(t.keys.verification(id));
    return Number(h.wf_step) === step ? h : undefined;
  }, timeoutMs);
}

const check = (t: TestEngine, auth: string, id: string, code: string) => http(`${t.url}/v1/verify/check`, { auth, body: { request_id: id, code } });
const status = async (t: TestEngine, auth: string, id: string) => (await http(`${t.url}/v1/verify/${id}`, { auth })).body;
const calls = (u: SippUas): number => new Set(u.requests('INVITE').map((m) => m.header('call-id'))).size;
const withWebhook = async (t: TestEngine, accountId: string): Promise<void> => {
  await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(accountId, hookUrl);
};
const balance = async (t: TestEngine, accountId: string): Promise<number> => (await t.accounts.get(accountId)).balance;

async function voiceFarEnd(scenario: string, calls: number): Promise<SippUas> {
  rtp = await startRtpReceiver();
  return startSippUas({
    scenario,
    calls,
    vars: { rtp_ip: '127.0.0.1', rtp_port: rtp.port, rtp_pt: 0, rtp_codec: 'PCMU' },
    maxLifetimeMs: 50_000,
  });
}

describe('workflows', () => {
  it('flash busy → voice answered: verified with the voice step\'s code; the flash code is refused', async () => {
    uas = await voiceFarEnd('uas-busy-flash-answer-voice', 2);
    // Two sends per number per 10 minutes: the workflow's two steps are two sends.
    engine = await startTestEngine(config({ fraud: { velocity: { perNumber: { limit: 2, windowSeconds: 600 } } } }));
    const account = await engine.account({ balance: 1 });
    await withWebhook(engine, account.account_id);
    const workflow = [{ method: 'flash_call', timeout_seconds: 20 }, { method: 'voice', timeout_seconds: 30 }, { method: 'sms' }];
    const res = await create(engine, account.auth, { workflow, code_length: 6 });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    expect(res.body).toMatchObject({ method: 'flash_call', status: 'sent', code_length: 4, cost: { amount: PRICE.flash_call, currency: 'GBP' }, workflow });
    const id = String(res.body.request_id);
    const flashCode = await currentCode(engine, id);

    await waitStep(engine, id, 1);
    const voiceCode = await currentCode(engine, id);
    expect(voiceCode).toMatch(/^\d{6}$/);
    await waitFor(async () => (await status(engine!, account.auth, id)).status === 'delivered', 10_000);

    // The flash step's code, now that the voice step has started: a clear answer, and no attempt spent on it.
    const refused = await check(engine, account.auth, id, flashCode);
    expect([refused.status, refused.body.error, refused.body.attempts_remaining]).toEqual([400, 'invalid_code', 3]);
    expect(String(refused.body.message)).toMatch(/code of workflow\[0\] \(flash_call\), which has ended; this verification is now at workflow\[1\] \(voice\): enter the code sent by voice/);
    const wrong = await check(engine, account.auth, id, voiceCode === '000000' ? '111111' : '000000');
    expect([wrong.status, wrong.body.attempts_remaining, String(wrong.body.message)]).toEqual([400, 2, expect.not.stringMatching(/workflow/)]);
    // A check that races a code change (the script sees another MAC than the caller read) counts nothing and
    // reports the attempts actually left, never 0.
    const [stale, left] = (await scripts.recordCheck.run(
      engine.redis,
      [
        engine.keys.verification(id),
        engine.keys.events(),
        engine.keys.usage(account.account_id, utcDay(Date.now())),
        engine.keys.webhookOrder(id),
        engine.keys.account(account.account_id),
        engine.keys.conversion(utcDay(Date.now())),
      ],
      ['mac-of-a-code-that-changed', '1', Date.now(), 3, 1000, 60],
    )) as [string, number];
    expect([stale, left]).toEqual(['stale', 2]);
    const ok = await check(engine, account.auth, id, voiceCode);
    expect([ok.status, ok.body.status]).toEqual([200, 'verified']);

    const body = await status(engine, account.auth, id);
    expect(body.status).toBe('verified');
    expect(body.method).toBe('voice');
    expect(body.attempts).toMatchObject([
      { method: 'flash_call', status: 'failed', failure_reason: 'busy', cost: { amount: PRICE.flash_call } },
      { method: 'voice', status: 'verified', cost: { amount: PRICE.voice }, ended_at: expect.any(String) },
    ]);
    // A failed step with steps left never failed the request.
    expect((body.status_history as { status: string }[]).map((s) => s.status)).not.toContain('failed');
    expect(calls(uas)).toBe(2);
    expect(await balance(engine, account.account_id)).toBeCloseTo(1 - PRICE.flash_call - PRICE.voice, 6);
    const events = (await readEvents(engine.redis, engine.keys)).filter((e) => e.request_id === id);
    expect(events.filter((e) => e.event === 'verification.step_started').map((e) => [e.step, e.method])).toEqual([['1', 'voice']]);
    // The codes never travel in events.
    for (const e of events) expect(JSON.stringify(e)).not.toContain(voiceCode);
    // The flash step's failure is no webhook: the customer sees sent, delivered, verified.
    await waitFor(async () => hooks.events(id).includes('verification.verified'), 10_000);
    expect(hooks.events(id)).toEqual(['verification.sent', 'verification.delivered', 'verification.verified']);

    // Conversion per country, each step under its own method (sent), the verified one under the step that verified,
    // in Redis (per day, written in batches every 250 ms) and in the metrics.
    const conv = await waitFor(async () => {
      const h = await engine!.redis.hgetall(engine!.keys.conversion(utcDay(Date.now())));
      return h['country:GB:voice:verified'] ? h : undefined;
    }, 2000);
    expect(conv).toMatchObject({ 'country:GB:flash_call:sent': '1', 'country:GB:voice:sent': '1', 'country:GB:voice:verified': '1' });
    expect(conv['country:GB:flash_call:verified']).toBeUndefined();
    const metrics = await (await fetch(`${engine.url}/metrics`)).text();
    expect(metrics).toContain('flashverify_conversion_sent_total{country="GB",method="flash_call"} 1');
    expect(metrics).toContain('flashverify_conversion_sent_total{country="GB",method="voice"} 1');
    expect(metrics).toContain('flashverify_conversion_verified_total{country="GB",method="voice"} 1');
    // Both steps counted in the per-number window: a third send to this number is refused.
    const third = await create(engine, account.auth, { method: 'sms' });
    expect([third.status, third.body.error, third.body.limit]).toEqual([429, 'rate_limited', 'per-number']);
  }, 40_000);

  it('"auto": flash rings but times out → voice no answer → sms delivered; verified with the SMS code; attempts and usage per method', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 2, maxLifetimeMs: 40_000 });
    engine = await startTestEngine(
      config({
        verification: {
          minStepTimeoutSeconds: 1,
          defaultWorkflow: [{ method: 'flash_call', timeout_seconds: 2 }, { method: 'voice', timeout_seconds: 20 }, { method: 'sms' }],
        },
        sms: { enabled: true, smscs: [smscEntry(smsc)] },
      } as DeepPartial<Config>),
    );
    await waitFor(async () => (await smsc.state()).sessions.some((s) => s.bound && s.closedAt === null), 5000);
    const account = await engine.account({ balance: 1 });
    const res = await create(engine, account.auth, { method: 'auto', code_length: 6 });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    expect(res.body).toMatchObject({ method: 'flash_call', code_length: 4, workflow: [{ method: 'flash_call' }, { method: 'voice' }, { method: 'sms' }] });
    const id = String(res.body.request_id);

    await waitStep(engine, id, 2, 20_000).catch(async (err) => {
      process.stderr.write(JSON.stringify(await engine!.redis.hgetall(engine!.keys.verification(id)), null, 1) + '\n');
      process.stderr.write(JSON.stringify(await readEvents(engine!.redis, engine!.keys), null, 1) + '\n');
      process.stderr.write(engine!.logs.filter((l) => /warn|error|workflow|"level":[45]/.test(l)).join('') + '\n');
      throw err;
    });
    const smsCode = await currentCode(engine, id);
    const submit = await waitFor(async () => (await smsc.state()).submits.find((s) => s.destination === PHONE.slice(1) && s.status === 0), 10_000);
    expect(submit.text.endsWith(smsCode)).toBe(true);
    await waitFor(async () => ((await status(engine!, account.auth, id)).attempts as { status: string }[] | undefined)?.[2]?.status === 'delivered', 10_000);
    const ok = await check(engine, account.auth, id, smsCode);
    expect([ok.status, ok.body.status]).toEqual([200, 'verified']);

    const body = await status(engine, account.auth, id);
    expect(body).toMatchObject({ status: 'verified', method: 'sms' });
    expect(body.attempts).toMatchObject([
      { method: 'flash_call', status: 'timed_out', cost: { amount: PRICE.flash_call } },
      { method: 'voice', status: 'failed', failure_reason: 'no_answer', cost: { amount: PRICE.voice } },
      { method: 'sms', status: 'verified', cost: { amount: PRICE.sms } },
    ]);
    expect(calls(uas)).toBe(2);
    const usage = (await http(`${engine.url}/v1/usage`, { auth: account.auth })).body;
    expect(usage.by_method).toEqual({
      flash_call: { count: 1, cost: PRICE.flash_call },
      voice: { count: 1, cost: PRICE.voice },
      sms: { count: 1, cost: PRICE.sms },
    });
    expect(usage.total_verifications).toBe(3);
  }, 45_000);

  it('verified at step one stops the rest: no later call, no later charge', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 2, maxLifetimeMs: 30_000 });
    engine = await startTestEngine(config());
    const account = await engine.account({ balance: 1 });
    const res = await create(engine, account.auth, { workflow: [{ method: 'flash_call', timeout_seconds: 2 }, { method: 'voice' }] });
    const id = String(res.body.request_id);
    await waitFor(async () => (await status(engine!, account.auth, id)).status === 'delivered', 10_000);
    const ok = await check(engine, account.auth, id, await currentCode(engine, id));
    expect(ok.status).toBe(200);
    await new Promise((r) => setTimeout(r, 3000)); // past the flash step's timeout
    expect(calls(uas)).toBe(1);
    const h = await engine.redis.hgetall(engine.keys.verification(id));
    expect(h.wf_step).toBe('0');
    expect(await balance(engine, account.account_id)).toBeCloseTo(1 - PRICE.flash_call, 6);
    expect((await status(engine, account.auth, id)).attempts).toMatchObject([{ method: 'flash_call', status: 'verified' }]);
  }, 20_000);

  it('a next step the balance cannot pay: the request fails at that step, and GET, its history and its failed event name that step\'s method', async () => {
    uas = await startSippUas({ scenario: 'uas-busy-486', calls: 1, maxLifetimeMs: 30_000 });
    engine = await startTestEngine(config());
    const account = await engine.account({ balance: PRICE.flash_call });
    const res = await create(engine, account.auth, { workflow: [{ method: 'flash_call', timeout_seconds: 20 }, { method: 'voice' }] });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    const id = String(res.body.request_id);
    const body = await waitFor(async () => {
      const b = await status(engine!, account.auth, id);
      return b.status === 'failed' ? b : undefined;
    }, 15_000);
    expect(body).toMatchObject({ method: 'voice', failure_reason: 'insufficient_balance' });
    expect(body.attempts).toMatchObject([{ method: 'flash_call', status: 'failed', failure_reason: 'busy' }, { method: 'voice', status: 'failed', failure_reason: 'insufficient_balance' }]);
    // The request's own failed event (a step's has its `step`).
    const failed = (await readEvents(engine.redis, engine.keys)).filter((e) => e.request_id === id && e.status === 'failed' && e.step === undefined);
    expect(failed.map((e) => e.method)).toEqual(['voice']);
    expect(await balance(engine, account.account_id)).toBeCloseTo(0, 6);
  }, 20_000);

  it('no advancer when a step fails: its event waits in the stream; the next step starts exactly once after restart, a redelivery changes nothing', async () => {
    uas = await voiceFarEnd('uas-busy-flash-answer-voice', 2);
    // First run without an advancer: the flash step fails, its event waits in the stream.
    const base = config({ events: { workflowGroup: '' } });
    const first = await startTestEngine(base);
    engine = first;
    const account = await first.account({ balance: 1 });
    const res = await create(first, account.auth, { workflow: [{ method: 'flash_call', timeout_seconds: 20 }, { method: 'voice' }] });
    const id = String(res.body.request_id);
    await waitFor(async () => (await first.redis.hget(first.keys.verification(id), 'att0_status')) === 'failed', 10_000);
    expect((await first.redis.hgetall(first.keys.verification(id))).status).toBe('sent');
    engine = undefined;
    await first.engine.stop();
    await first.redis.quit();

    // Restart with the advancer (same prefix): it reads the stream from the start.
    engine = await startTestEngine({ ...base, events: { ...base.events, workflowGroup: 'workflow' } });
    await waitStep(engine, id, 1);
    // The same failed event again (a redelivery): no second step.
    const failed = (await engine.redis.xrange(engine.keys.events(), '-', '+')).find(([, f]) => f.includes('verification.failed'));
    expect(failed).toBeDefined();
    await engine.redis.xadd(engine.keys.events(), '*', ...failed![1]);
    await waitFor(async () => (await status(engine!, account.auth, id)).status === 'delivered', 10_000);
    await new Promise((r) => setTimeout(r, 1000));
    const h = await engine.redis.hgetall(engine.keys.verification(id));
    expect(h.wf_step).toBe('1');
    expect(calls(uas)).toBe(2);
    const events = (await readEvents(engine.redis, engine.keys)).filter((e) => e.request_id === id);
    expect(events.filter((e) => e.event === 'verification.step_started')).toHaveLength(1);
    expect(await balance(engine, account.account_id)).toBeCloseTo(1 - PRICE.flash_call - PRICE.voice, 6);
    const ok = await check(engine, account.auth, id, await currentCode(engine, id));
    expect(ok.status).toBe(200);
  }, 40_000);

  it('crash between steps: the worker advancing the step is SIGKILLed after the step moved but before its job was queued; after restart the next step starts exactly once', async () => {
    uas = await voiceFarEnd('uas-busy-flash-answer-voice', 2);
    cluster = await engineCluster({
      api: { defaultRateLimitPerSecond: 1000 },
      // A dead worker's unacknowledged events are taken over after 1 s; its jobs stall after 2 s.
      events: { claimIdleMs: 1000 },
      worker: { lockDurationMs: 2000, stalledIntervalMs: 1000, shutdownGraceMs: 2000 },
      flash: { ringMs: 300, ringingTimeoutMs: 3000 },
      voice: { answerTimeoutMs: 3000 },
      verification: { minStepTimeoutSeconds: 1 },
      sip: { timers: { t1Ms: T1, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] },
    });
    const c = cluster;
    // The voice queue refuses new jobs: BullMQ's add script INCRs <queue>:id first, and fails on a value that is
    // not a number, before writing anything. The advancer's CAS (wf_step 0 → 1, voice step charged) succeeds,
    // its queueing fails, and the stream entry stays unacknowledged: the state of a process dying in between.
    const voiceIdKey = `${c.keys.bullPrefix()}:voice:id`;
    await c.redis.set(voiceIdKey, 'not-a-number');
    await c.start('api');
    const first = await c.start('worker');
    const account = await c.account(1);
    const res = await http(`${c.httpUrl}/v1/verify`, {
      auth: account.auth,
      body: { phone_number: PHONE, workflow: [{ method: 'flash_call', timeout_seconds: 20 }, { method: 'voice' }] },
    });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    const id = String(res.body.request_id);
    const key = c.keys.verification(id);
    await waitFor(async () => (await c.redis.hget(key, 'wf_step')) === '1', 15_000);
    await waitFor(async () => first.output().includes('could not queue the step'), 10_000);
    first.kill('SIGKILL');
    await first.waitExit(5000);
    // Moved, charged, never dialled: only the flash call reached the far end.
    const moved = await c.redis.hgetall(key);
    expect([moved.status, moved.method, moved.att1_status, moved.dial_started]).toEqual(['sent', 'voice', 'sent', undefined]);
    expect(calls(uas)).toBe(1);
    const pending = (await c.redis.xpending(c.keys.events(), 'workflow')) as [number, ...unknown[]];
    expect(pending[0]).toBeGreaterThanOrEqual(1);

    await c.redis.del(voiceIdKey);
    const second = await c.start('worker');
    // The new worker takes the dead one's event over, finds the step started but not dialled, and queues it.
    await waitFor(async () => (await c.redis.hget(key, 'status')) === 'delivered' && (await c.redis.hget(key, 'answered_at')) !== null, 20_000);
    expect(second.output()).toMatch(/next step started earlier but not dialled; queueing it/);
    const code = c.sealer.open((await c.redis.hget(key, 'code_enc'))!, `code:${id}`);
    const ok = await http(`${c.httpUrl}/v1/verify/check`, { auth: account.auth, body: { request_id: id, code } });
    expect([ok.status, ok.body.status]).toEqual([200, 'verified']);
    // Let a repeat show itself if there were one: the event is acknowledged, and no second voice call comes.
    await waitFor(async () => ((await c.redis.xpending(c.keys.events(), 'workflow')) as [number])[0] === 0, 10_000);
    await new Promise((r) => setTimeout(r, 1500));
    expect(calls(uas)).toBe(2);
    const h = await c.redis.hgetall(key);
    expect([h.wf_step, h.status]).toEqual(['1', 'verified']);
    const events = (await readEvents(c.redis, c.keys)).filter((e) => e.request_id === id);
    expect(events.filter((e) => e.event === 'verification.step_started').map((e) => [e.step, e.method])).toEqual([['1', 'voice']]);
    expect((await new AccountStore(c.redis, c.keys, c.sealer).get(account.account_id)).balance).toBeCloseTo(1 - PRICE.flash_call - PRICE.voice, 6);
  }, 60_000);

  it('cancel: status canceled, later steps never start, only the attempt sent is billed', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 2, maxLifetimeMs: 30_000 });
    engine = await startTestEngine(config());
    const account = await engine.account({ balance: 1 });
    await withWebhook(engine, account.account_id);
    const res = await create(engine, account.auth, { workflow: [{ method: 'flash_call', timeout_seconds: 2 }, { method: 'voice', timeout_seconds: 5 }, { method: 'sms' }] });
    const id = String(res.body.request_id);
    await waitFor(async () => (await status(engine!, account.auth, id)).status === 'delivered', 10_000);
    const code = await currentCode(engine, id);
    const canceled = await http(`${engine.url}/v1/verify/${id}/cancel`, { auth: account.auth, method: 'POST' });
    expect([canceled.status, canceled.body.status]).toEqual([200, 'canceled']);
    await new Promise((r) => setTimeout(r, 3000)); // past the flash step's timeout
    expect(calls(uas)).toBe(1);
    const body = await status(engine, account.auth, id);
    expect(body.status).toBe('canceled');
    expect(body.attempts).toMatchObject([{ method: 'flash_call', status: 'canceled', cost: { amount: PRICE.flash_call } }]);
    expect(await balance(engine, account.account_id)).toBeCloseTo(1 - PRICE.flash_call, 6);
    // The flash call rang: sent, so in the usage; no later step is.
    const usage = (await http(`${engine.url}/v1/usage`, { auth: account.auth })).body;
    expect(usage.by_method).toMatchObject({ flash_call: { count: 1, cost: PRICE.flash_call }, voice: { count: 0 }, sms: { count: 0 } });
    const late = await check(engine, account.auth, id, code);
    expect([late.status, late.body.error]).toEqual([400, 'verification_expired']);
    const again = await http(`${engine.url}/v1/verify/${id}/cancel`, { auth: account.auth, method: 'POST' });
    expect([again.status, again.body.error]).toEqual([400, 'verification_expired']);
    const events = (await readEvents(engine.redis, engine.keys)).filter((e) => e.request_id === id);
    expect(events.map((e) => e.event)).toContain('verification.canceled');
    expect(events.map((e) => e.event)).not.toContain('verification.step_started');
    await waitFor(async () => hooks.events(id).includes('verification.canceled'), 10_000);
    expect(hooks.events(id)).toEqual(['verification.sent', 'verification.delivered', 'verification.canceled']);
  }, 20_000);

  it('a step timeout CANCELs its ringing flash call, cancel CANCELs the ringing voice call; the late flash outcome leaves the voice step alone', async () => {
    // Both calls would ring 25 s (flash ringMs, voice answer timeout): only the workflow can end them sooner.
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 2, maxLifetimeMs: 40_000 });
    engine = await startTestEngine(config({ flash: { ringMs: 25_000, ringingTimeoutMs: 3000 }, voice: { answerTimeoutMs: 25_000 } }));
    const t = engine;
    const account = await t.account({ balance: 1 });
    const res = await create(t, account.auth, { workflow: [{ method: 'flash_call', timeout_seconds: 2 }, { method: 'voice' }] });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    const id = String(res.body.request_id);
    const cancelled = (u: SippUas): number => new Set(u.requests('CANCEL').map((m) => m.header('call-id'))).size;

    // Step 0 times out while the flash call rings: it is CANCELled, and the voice step rings.
    await waitStep(t, id, 1);
    await waitFor(async () => cancelled(uas!) === 1 && calls(uas!) === 2, 10_000);
    await waitFor(async () => t.logs.some((l) => l.includes('flash call finished')), 10_000);
    // The flash call's outcome came after the step moved on: the voice step's record carries none of it.
    const h = await t.redis.hgetall(t.keys.verification(id));
    expect([h.method, h.att0_status, h.outcome, h.final_sip_status, h.range, h.cli_range, h.rang_at]).toEqual([
      'voice',
      'timed_out',
      undefined,
      undefined,
      undefined,
      undefined,
      undefined,
    ]);

    // Cancel while the voice call rings: CANCELled too, and no failure is reported for it.
    const canceled = await http(`${t.url}/v1/verify/${id}/cancel`, { auth: account.auth, method: 'POST' });
    expect([canceled.status, canceled.body.status]).toEqual([200, 'canceled']);
    await waitFor(async () => cancelled(uas!) === 2, 10_000);
    await waitFor(async () => t.logs.some((l) => l.includes('voice call finished')), 10_000);
    const body = await status(t, account.auth, id);
    expect(body.status).toBe('canceled');
    expect(body.attempts).toMatchObject([
      { method: 'flash_call', status: 'timed_out', cost: { amount: PRICE.flash_call } },
      { method: 'voice', status: 'canceled', cost: { amount: PRICE.voice } },
    ]);
    const events = (await readEvents(t.redis, t.keys)).filter((e) => e.request_id === id);
    expect(events.map((e) => e.event)).not.toContain('verification.failed');
    expect(calls(uas)).toBe(2);
  }, 40_000);

  it('cancel before the first step was dialled refunds it; another account\'s id is 404', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', maxLifetimeMs: 20_000 });
    // Worker-less: the step never leaves the queue.
    const cfg = config();
    engine = await startTestEngine(cfg, 'api');
    const account = await engine.account({ balance: 1 });
    const other = await engine.account({ balance: 1 });
    const res = await create(engine, account.auth, { workflow: [{ method: 'flash_call', timeout_seconds: 5 }, { method: 'sms' }] });
    const id = String(res.body.request_id);
    expect((await http(`${engine.url}/v1/verify/${id}/cancel`, { auth: other.auth, method: 'POST' })).status).toBe(404);
    const canceled = await http(`${engine.url}/v1/verify/${id}/cancel`, { auth: account.auth, method: 'POST', body: {} });
    expect([canceled.status, canceled.body.status]).toEqual([200, 'canceled']);
    expect(canceled.body.attempts).toMatchObject([{ method: 'flash_call', status: 'canceled', cost: { amount: 0 } }]);
    expect(await balance(engine, account.account_id)).toBe(1);
    // Not sent: not in the usage either.
    const usage = (await http(`${engine.url}/v1/usage`, { auth: account.auth })).body;
    expect([usage.total_verifications, (usage.by_method as Record<string, unknown>).flash_call]).toEqual([0, { count: 0, cost: 0 }]);
  }, 20_000);

  it('cancel before an SMS step was submitted: a worker that picks its job up later never submits it', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', maxLifetimeMs: 20_000 });
    const cfg = config({ sms: { enabled: true, smscs: [smscEntry(smsc)] } } as DeepPartial<Config>);
    // The api alone first: the SMS step waits in its queue.
    engine = await startTestEngine(cfg, 'api');
    const account = await engine.account({ balance: 1 });
    const res = await create(engine, account.auth, { workflow: [{ method: 'sms', timeout_seconds: 30 }, { method: 'voice' }] });
    const id = String(res.body.request_id);
    const canceled = await http(`${engine.url}/v1/verify/${id}/cancel`, { auth: account.auth, method: 'POST' });
    expect([canceled.status, canceled.body.status]).toEqual([200, 'canceled']);
    // Now a worker (same Redis prefix) takes the job: it finds the request canceled.
    const worker = await startTestEngine(cfg, 'worker');
    try {
      await waitFor(async () => worker.logs.some((l) => l.includes(id) && l.includes('not delivering again')), 10_000);
      expect((await smsc.state()).submits.filter((x) => x.destination === PHONE.slice(1))).toEqual([]);
      expect(await balance(engine, account.account_id)).toBe(1);
      expect((await status(engine, account.auth, id)).attempts).toMatchObject([{ method: 'sms', status: 'canceled', cost: { amount: 0 } }]);
    } finally {
      await worker.engine.stop();
      await worker.redis.quit();
    }
  }, 20_000);

  it('attempts that never reached the network are refunded and left out of usage, for a workflow step and a one-method request', async () => {
    // A trunk nobody answers on: every INVITE times out (Timer B), which never reached the far end.
    const deadPort = await findFreePort();
    engine = await startTestEngine(
      testConfig({
        api: { defaultRateLimitPerSecond: 1000 },
        fraud: { liveVerification: 'off' },
        verification: { minStepTimeoutSeconds: 1 },
        sip: { timers: { t1Ms: 20, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'dead', uri: `sip:127.0.0.1:${deadPort}` }] },
      }),
    );
    const account = await engine.account({ balance: 1 });
    const wf = await create(engine, account.auth, { workflow: [{ method: 'flash_call', timeout_seconds: 20 }, { method: 'voice' }] });
    const one = await create(engine, account.auth, { method: 'flash_call' });
    for (const r of [wf, one]) {
      await waitFor(async () => (await status(engine!, account.auth, String(r.body.request_id))).status === 'failed', 15_000);
    }
    const body = await status(engine, account.auth, String(wf.body.request_id));
    expect(body.attempts).toMatchObject([
      { method: 'flash_call', status: 'failed', cost: { amount: 0 } },
      { method: 'voice', status: 'failed', cost: { amount: 0 } },
    ]);
    expect(body.cost).toMatchObject({ amount: 0 });
    expect(await balance(engine, account.account_id)).toBe(1);
    const usage = (await http(`${engine.url}/v1/usage`, { auth: account.auth })).body;
    expect([usage.total_verifications, usage.total_cost]).toEqual([0, { amount: 0, currency: 'GBP' }]);
    expect(usage.by_method).toMatchObject({ flash_call: { count: 0, cost: 0 }, voice: { count: 0, cost: 0 } });
    // Nor are they sends for the per-country conversion: counted when sent (create, next step), taken out with the refund.
    const conv = engine.keys.conversion(utcDay(Date.now()));
    const sent = await waitFor(async () => {
      const h = await engine!.redis.hgetall(conv);
      return h['country:GB:flash_call:sent'] === '0' && h['country:GB:voice:sent'] === '0' ? h : undefined;
    }, 5_000).catch(async () => engine!.redis.hgetall(conv));
    expect([sent['country:GB:flash_call:sent'], sent['country:GB:voice:sent']]).toEqual(['0', '0']);
  }, 40_000);

  it('an SMS step that times out while its submit_sm is in flight: its late acceptance and receipt never count for the next step', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 1, maxLifetimeMs: 30_000 });
    // The SMSC answers submit_sm after 2.5 s (within the gateway's 5 s): the 1 s SMS step is over by then.
    await smsc.set({ respDelayMs: 2500 });
    try {
      engine = await startTestEngine(
        config({
          voice: { answerTimeoutMs: 20_000 },
          sms: { enabled: true, smscs: [smscEntry(smsc, { responseTimeoutMs: 5000 })] },
        } as DeepPartial<Config>),
      );
      const t = engine;
      await waitFor(async () => (await smsc.state()).sessions.some((x) => x.bound && x.closedAt === null), 5000);
      const account = await t.account({ balance: 1 });
      const res = await create(t, account.auth, { workflow: [{ method: 'sms', timeout_seconds: 1 }, { method: 'voice' }] });
      expect(res.status, JSON.stringify(res.body)).toBe(201);
      const id = String(res.body.request_id);
      await waitStep(t, id, 1);
      // Accepted, then its delivery receipt: both after the voice step started.
      await waitFor(async () => t.logs.some((l) => l.includes(id) && l.includes('receipt of an earlier workflow step; ignored')), 15_000);
      const h = await t.redis.hgetall(t.keys.verification(id));
      expect([h.status, h.method, h.att0_status, h.att1_status, h.sms_message_id, h.sms_state, h.sms_receipt]).toEqual([
        'sent',
        'voice',
        'timed_out',
        'sent',
        undefined,
        undefined,
        undefined,
      ]);
      // The voice step rings all the while.
      expect(calls(uas)).toBe(1);
    } finally {
      await smsc.set({ respDelayMs: 0 });
    }
  }, 30_000);

  it('resend: true on a live workflow request is 409 with its request_id: it starts its next step by itself', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', maxLifetimeMs: 20_000 });
    engine = await startTestEngine(config(), 'api');
    const account = await engine.account({ balance: 1 });
    const res = await create(engine, account.auth, { workflow: [{ method: 'voice', timeout_seconds: 30 }, { method: 'sms' }] });
    expect(res.status).toBe(201);
    const id = String(res.body.request_id);
    for (const body of [{ workflow: [{ method: 'voice', timeout_seconds: 30 }, { method: 'sms' }], resend: true }, { method: 'voice', resend: true }, { method: 'auto', resend: true }]) {
      const again = await create(engine, account.auth, body);
      expect([again.status, again.body.error, again.body.request_id], JSON.stringify(body)).toEqual([409, 'verification_pending', id]);
      expect(String(again.body.message)).toMatch(/it is a workflow and starts its next step by itself, so it cannot be resent/);
    }
    // Without resend, the 409 does not suggest one (which would be refused as above).
    const plain = await create(engine, account.auth, { method: 'voice' });
    expect([plain.status, plain.body.request_id]).toEqual([409, id]);
    expect(String(plain.body.message)).toMatch(/it is a workflow and starts its next step by itself: wait for it to finish$/);
    // Nothing more was sent nor charged.
    expect(await balance(engine, account.account_id)).toBeCloseTo(1 - PRICE.voice, 6);
    expect(Number(await engine.redis.hget(engine.keys.verification(id), 'sends') ?? 1)).toBe(1);
  }, 20_000);

  it('validates workflows', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', maxLifetimeMs: 20_000 });
    engine = await startTestEngine(config({ verification: { minStepTimeoutSeconds: 5 } }), 'api');
    const account = await engine.account({ balance: 1 });
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ method: 'voice', workflow: [{ method: 'sms' }] }, /mutually exclusive/],
      [{ workflow: [] }, /1 to 5 steps/],
      [{ workflow: Array.from({ length: 6 }, () => ({ method: 'sms', timeout_seconds: 10 })) }, /1 to 5 steps/],
      [{ workflow: [{ method: 'fax', timeout_seconds: 10 }, { method: 'sms' }] }, /workflow\[0\]\.method/],
      [{ workflow: [{ method: 'flash_call' }, { method: 'sms' }] }, /timeout_seconds is required/],
      [{ workflow: [{ method: 'flash_call', timeout_seconds: 4 }, { method: 'sms' }] }, /from 5 to/],
      [{ workflow: [{ method: 'flash_call', timeout_seconds: 301 }, { method: 'sms' }], expiry_seconds: 300 }, /from 5 to 300/],
      [{ workflow: [{ method: 'sms', extra: 1 }] }, /unknown field/],
      [{ workflow: [{ method: 'sms' }], code_length: 7 }, /code_length/],
      [{ workflow: [{ method: 'sms', timeout_seconds: 10 }, { method: 'sms' }] }, /workflow\[1\]: the same method as the step before it \("sms"\)/],
    ];
    for (const [body, message] of bad) {
      const r = await create(engine, account.auth, body);
      expect([r.status, r.body.error], JSON.stringify(body)).toEqual([400, 'invalid_request']);
      expect(String(r.body.message)).toMatch(message);
    }
    const one = await create(engine, account.auth, { workflow: [{ method: 'sms' }], code_length: 6 });
    expect(one.status).toBe(201);
    expect(one.body).toMatchObject({ method: 'sms', code_length: 6, workflow: [{ method: 'sms' }] });
    expect(await balance(engine, account.account_id)).toBeCloseTo(1 - PRICE.sms, 6);
  }, 20_000);
});
