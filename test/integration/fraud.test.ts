import { Queue } from 'bullmq';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { DeepPartial } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { QUEUE_NAMES } from '../../src/engine/queues.js';
import { RangeHealth } from '../../src/numbers/range-health.js';
import { FraudControls } from '../../src/verification/fraud-controls.js';
import { resendLive } from '../../src/verification/resend.js';
import { http, readEvents, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { findFreePort, sipUriUser, startSippUas, type SippUas } from '../helpers/sipp.js';

/**
 * Fraud and abuse controls (issue 6) over real HTTP and real Redis: velocity
 * windows, country lists, number types, one live verification per number
 * with resends, test numbers, and DID range quarantine (with SIPp far ends).
 */
const ADMIN = 'admin-token-for-fraud-tests';
const T1 = 50;

let engine: TestEngine | undefined;
let uas: SippUas | undefined;
afterEach(async () => {
  await uas?.stop();
  await engine?.stop();
  uas = undefined;
  engine = undefined;
});

async function start(overrides: DeepPartial<Config>, role: 'api' | 'all' = 'api'): Promise<TestEngine> {
  engine = await startTestEngine(
    testConfig({ api: { defaultRateLimitPerSecond: 1000 }, admin: { token: ADMIN }, ...overrides }),
    role,
  );
  return engine;
}

/** An engine whose trunk is a SIPp far end running `scenario` for `calls` calls. */
async function startWithSipp(scenario: string, calls: number, overrides: DeepPartial<Config> = {}): Promise<TestEngine> {
  uas = await startSippUas({ scenario, calls, maxLifetimeMs: 60_000 });
  return start(
    {
      flash: { ringMs: 300, ringingTimeoutMs: 1500 },
      sip: { timers: { t1Ms: T1, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] },
      ...overrides,
    },
    'all',
  );
}

const verify = (t: TestEngine, auth: string, body: Record<string, unknown>) => http(`${t.url}/v1/verify`, { auth, body });
const setFraud = (t: TestEngine, accountId: string, body: unknown) =>
  http(`${t.url}/admin/v1/accounts/${accountId}/fraud`, { method: 'PUT', auth: `Bearer ${ADMIN}`, body });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const codeOf = async (t: TestEngine, id: string) => t.sealer.open((await t.redis.hget(t.keys.verification(id), 'code_enc'))!, `code:${id}`);

describe('velocity limits (sliding windows per account)', () => {
  it('per number: 429 naming the limit with Retry-After, and the window slides', async () => {
    const t = await start({ fraud: { liveVerification: 'off', velocity: { perNumber: { limit: 2, windowSeconds: 2 } } } });
    const a = await t.account();
    expect((await verify(t, a.auth, { phone_number: '+447700900301' })).status).toBe(201);
    expect((await verify(t, a.auth, { phone_number: '+447700900301' })).status).toBe(201);
    const over = await verify(t, a.auth, { phone_number: '+447700900301' });
    expect(over.status).toBe(429);
    expect(over.body).toMatchObject({ error: 'rate_limited', limit: 'per-number' });
    expect(String(over.body.message)).toMatch(/to this number: the per-number limit is 2 per 2 s/);
    const retryAfter = Number(over.headers.get('retry-after'));
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(2);
    // The rate-limit headers say the same as Retry-After (a client adapting to them does not retry at once).
    expect(over.headers.get('x-ratelimit-remaining')).toBe('0');
    expect(Number(over.headers.get('x-ratelimit-reset')) - Math.ceil(Date.now() / 1000)).toBeGreaterThanOrEqual(retryAfter - 1);
    // Another number, another account: their own windows.
    expect((await verify(t, a.auth, { phone_number: '+447700900302' })).status).toBe(201);
    const b = await t.account();
    expect((await verify(t, b.auth, { phone_number: '+447700900301' })).status).toBe(201);
    // The refused request was not billed.
    expect((await t.accounts.get(a.account_id)).balance).toBeCloseTo(10 - 3 * 0.004, 6);
    await sleep(retryAfter * 1000 + 50);
    expect((await verify(t, a.auth, { phone_number: '+447700900301' })).status).toBe(201);
    // Never a number in clear in a key name.
    const names = await t.redis.keys(`${t.config.redis.prefix}:vel:*`);
    expect(names.length).toBeGreaterThanOrEqual(3);
    for (const k of names) expect(k).not.toMatch(/447700|\+44/);
  });

  it('per prefix (the number minus its last 4 digits)', async () => {
    const t = await start({ fraud: { liveVerification: 'off', velocity: { perPrefix: { limit: 2, windowSeconds: 2 } } } });
    const a = await t.account();
    expect((await verify(t, a.auth, { phone_number: '+447700900311' })).status).toBe(201);
    expect((await verify(t, a.auth, { phone_number: '+447700901312' })).status).toBe(201);
    const over = await verify(t, a.auth, { phone_number: '+447700909313' });
    expect([over.status, over.body.limit]).toEqual([429, 'per-prefix']);
    expect(String(over.body.message)).toMatch(/numbers of this prefix/);
    expect(over.headers.get('retry-after')).toMatch(/^[12]$/);
    // Another prefix is fine.
    expect((await verify(t, a.auth, { phone_number: '+447400123456' })).status).toBe(201);
  });

  it('per client IP; client_ip must be an IP address; a refused send counts in no window', async () => {
    const t = await start({
      fraud: { liveVerification: 'off', velocity: { perIp: { limit: 2, windowSeconds: 2 }, perNumber: { limit: 1, windowSeconds: 60 } } },
    });
    const a = await t.account();
    const ip = '203.0.113.7';
    expect((await verify(t, a.auth, { phone_number: '+447700900321', client_ip: ip })).status).toBe(201);
    expect((await verify(t, a.auth, { phone_number: '+447400123456', client_ip: ip })).status).toBe(201);
    const over = await verify(t, a.auth, { phone_number: '+33612345678', client_ip: ip });
    expect([over.status, over.body.limit]).toEqual([429, 'per-IP']);
    expect(String(over.body.message)).toMatch(/for this client IP/);
    // The refused send did not count for its number (per-number limit 1): it still goes out from another IP.
    expect((await verify(t, a.auth, { phone_number: '+33612345678', client_ip: '2001:db8::1' })).status).toBe(201);
    expect((await verify(t, a.auth, { phone_number: '+447911123456' })).status).toBe(201); // no client_ip: no IP window
    for (const bad of ['1.2.3', 'localhost', '203.0.113.7:80', 42]) {
      const r = await verify(t, a.auth, { phone_number: '+447911123457', client_ip: bad });
      expect([r.status, r.body.error]).toEqual([400, 'invalid_request']);
    }
    const names = await t.redis.keys(`${t.config.redis.prefix}:vel:*`);
    for (const k of names) expect(k).not.toContain('203.0.113.7');
  });
});

describe('country lists and number types', () => {
  it('numbers of no country (ZZ: +881 satellite, +882/+883 networks, +870 Inmarsat) are denied by default; an operator allows and prices them by ZZ', async () => {
    const closed = await start({});
    const a = await closed.account();
    for (const phone of ['+881612345678', '+8821612345678', '+870773123456']) {
      const r = await verify(closed, a.auth, { phone_number: phone, method: 'voice' });
      expect([r.status, r.body.error]).toEqual([400, 'invalid_phone']);
      expect(String(r.body.message)).toMatch(/a number of no country \(ZZ: a satellite or international network code/);
    }
    await closed.stop();
    const open = await start({ fraud: { countries: { deny: [] } }, pricing: { voice: { default: 0.02, ZZ: 1.5 } } });
    const b = await open.account({ balance: 10 });
    const r = await verify(open, b.auth, { phone_number: '+881612345678', method: 'voice' });
    expect([r.status, r.body.cost]).toEqual([201, { amount: 1.5, currency: 'GBP' }]);
    // An account may still deny them itself.
    await setFraud(open, b.account_id, { countries: { deny: ['ZZ'] } });
    expect((await verify(open, b.auth, { phone_number: '+881612345679', method: 'voice' })).status).toBe(400);
  });

  it('server deny list always applies; an account\'s lists only narrow the server\'s', async () => {
    const t = await start({ fraud: { countries: { deny: ['FR'] } } });
    const a = await t.account();
    const b = await t.account();
    const fr = await verify(t, a.auth, { phone_number: '+33612345678' });
    expect([fr.status, fr.body.error]).toEqual([400, 'invalid_phone']);
    expect(String(fr.body.message)).toMatch(/country FR is not allowed on this service/);
    const set = await setFraud(t, a.account_id, { countries: { allow: ['FR', 'GB'] } });
    expect(set.status).toBe(200);
    expect(set.body).toMatchObject({ overrides: { countries: { allow: ['FR', 'GB'] } } });
    // The account's allow list does not lift the operator's deny list.
    const stillFr = await verify(t, a.auth, { phone_number: '+33612345678' });
    expect([stillFr.status, String(stillFr.body.message)]).toEqual([400, expect.stringMatching(/country FR is not allowed on this service/)]);
    expect((await verify(t, a.auth, { phone_number: '+447700900350' })).status).toBe(201);
    // Only GB for this account now (FR stays denied by the server); the other account still follows the server lists.
    const us = await verify(t, a.auth, { phone_number: '+14155552671' });
    expect([us.status, us.body.error]).toEqual([400, 'invalid_phone']);
    expect(String(us.body.message)).toMatch(/country US is not allowed for this account/);
    expect((await verify(t, b.auth, { phone_number: '+14155552671' })).status).toBe(201);
    expect((await verify(t, b.auth, { phone_number: '+33612345679' })).status).toBe(400);
    await setFraud(t, b.account_id, { countries: { deny: ['US'] } });
    expect((await verify(t, b.auth, { phone_number: '+14155552672' })).status).toBe(400);
    expect((await verify(t, b.auth, { phone_number: '+33612345679' })).status).toBe(400); // its own deny list adds to the server's
    // Bad overrides are refused with the path of the problem.
    const bad = await setFraud(t, b.account_id, { countries: { deny: ['France'] } });
    expect([bad.status, bad.body.error]).toEqual([400, 'invalid_request']);
    expect(String(bad.body.message)).toMatch(/countries\.deny/);
    // {} clears them.
    expect((await setFraud(t, b.account_id, {})).body.overrides).toBeNull();
  });

  it('premium-rate and shared-cost refused for every method; fixed line refused for flash calls but fine for voice', async () => {
    const t = await start({ fraud: { liveVerification: 'off' } });
    const a = await t.account();
    for (const method of ['flash_call', 'voice', 'sms']) {
      const r = await verify(t, a.auth, { phone_number: '+449098790000', method });
      expect([r.status, r.body.error]).toEqual([400, 'invalid_phone']);
      expect(String(r.body.message)).toMatch(/premium-rate number is not accepted/);
    }
    const tollFree = await verify(t, a.auth, { phone_number: '+448001234567', method: 'voice' });
    expect(String(tollFree.body.message)).toMatch(/toll-free/);
    // Shared cost (France 0810), and UK 0845, which the metadata types as premium-rate (service charge).
    for (const [phone, words] of [['+33810123456', /shared-cost number is not accepted/], ['+448451234567', /premium-rate number is not accepted/]] as const) {
      const r = await verify(t, a.auth, { phone_number: phone, method: 'flash_call' });
      expect([r.status, r.body.error, String(r.body.message)]).toEqual([400, 'invalid_phone', expect.stringMatching(words)]);
    }
    const fixed = await verify(t, a.auth, { phone_number: '+442071234567', method: 'flash_call' });
    expect([fixed.status, fixed.body.error]).toEqual([400, 'invalid_phone']);
    expect(String(fixed.body.message)).toMatch(/flash calls go to mobile numbers only and this is a fixed-line number; use method "voice" or "sms"/);
    expect((await verify(t, a.auth, { phone_number: '+442071234567', method: 'voice' })).status).toBe(201);
    // Mobile and fixed-or-mobile (NANP) are fine for flash calls; so are numbers the metadata cannot type (Ofcom drama range).
    expect((await verify(t, a.auth, { phone_number: '+447400123456' })).status).toBe(201);
    expect((await verify(t, a.auth, { phone_number: '+14155552671' })).status).toBe(201);
    expect((await verify(t, a.auth, { phone_number: '+447700900331' })).status).toBe(201);
    // An account may allow fixed lines for flash calls.
    await setFraud(t, a.account_id, { lineTypes: { flashCall: ['MOBILE', 'FIXED_LINE_OR_MOBILE', 'FIXED_LINE'] } });
    expect((await verify(t, a.auth, { phone_number: '+442071234567', method: 'flash_call' })).status).toBe(201);
    const eff = await http(`${t.url}/admin/v1/accounts/${a.account_id}/fraud`, { auth: `Bearer ${ADMIN}` });
    expect(eff.body).toMatchObject({ effective: { lineTypes: { flashCall: ['MOBILE', 'FIXED_LINE_OR_MOBILE', 'FIXED_LINE'], allowUnknown: true } } });
  });

  it('every flash step of a workflow is screened up front: a later flash step to a landline is a 400 naming it; "auto" leaves it out', async () => {
    const t = await start({ fraud: { liveVerification: 'off' }, verification: { minStepTimeoutSeconds: 5 } });
    const a = await t.account({ balance: 1 });
    const landline = '+442071234567';
    const later = await verify(t, a.auth, { phone_number: landline, workflow: [{ method: 'sms', timeout_seconds: 30 }, { method: 'flash_call', timeout_seconds: 30 }, { method: 'voice' }] });
    expect([later.status, later.body.error]).toEqual([400, 'invalid_phone']);
    expect(String(later.body.message)).toMatch(/workflow\[1\] \(flash_call\): flash calls go to mobile numbers only and this is a fixed-line number/);
    // Nothing was created nor charged.
    expect((await t.accounts.get(a.account_id)).balance).toBe(1);
    // Shared cost: refused whatever the steps.
    const shared = await verify(t, a.auth, { phone_number: '+33810123456', workflow: [{ method: 'voice', timeout_seconds: 30 }, { method: 'sms' }] });
    expect([shared.status, String(shared.body.message)]).toEqual([400, expect.stringMatching(/shared-cost number is not accepted/)]);
    // The server's default workflow (flash, voice, sms) runs without its flash step; a mobile keeps it.
    const auto = await verify(t, a.auth, { phone_number: landline, method: 'auto' });
    expect([auto.status, auto.body.method]).toEqual([201, 'voice']);
    expect((auto.body.workflow as { method: string }[]).map((s) => s.method)).toEqual(['voice', 'sms']);
    const mobile = await verify(t, a.auth, { phone_number: '+447400123456', method: 'auto' });
    expect((mobile.body.workflow as { method: string }[]).map((s) => s.method)).toEqual(['flash_call', 'voice', 'sms']);
  });
});

describe('one live verification per number and account', () => {
  it('409 with the live request_id, whatever the method (per_number, the default); per_method lets another method through', async () => {
    const t = await start({});
    const a = await t.account();
    const first = await verify(t, a.auth, { phone_number: '+447700900341' });
    expect(first.status).toBe(201);
    const id = String(first.body.request_id);
    const again = await verify(t, a.auth, { phone_number: '+447700900341' });
    expect(again.status).toBe(409);
    expect(again.body).toEqual({ error: 'verification_pending', message: expect.stringMatching(/still pending/), request_id: id });
    // One live verification per number and account: another method too, and a workflow.
    const voice = await verify(t, a.auth, { phone_number: '+447700900341', method: 'voice' });
    expect([voice.status, voice.body.request_id]).toEqual([409, id]);
    expect(String(voice.body.message)).toMatch(/uses method flash_call/);
    // The docs' scripted fallback lands here: the answer says how to fall back on this server.
    expect(String(voice.body.message)).toMatch(/"workflow" \(e\.g\. \[\{"method":"flash_call","timeout_seconds":30\},\{"method":"voice"\}\]\).*per_method/);
    expect((await verify(t, a.auth, { phone_number: '+447700900341', method: 'auto' })).status).toBe(409);
    // Another account is not affected.
    expect((await verify(t, (await t.account()).auth, { phone_number: '+447700900341' })).status).toBe(201);
    // Once verified it is not live any more.
    const ok = await http(`${t.url}/v1/verify/check`, { auth: a.auth, body: { request_id: id, code: await codeOf(t, id) } });
    expect(ok.status).toBe(200);
    expect((await verify(t, a.auth, { phone_number: '+447700900341' })).status).toBe(201);

    // per_method (an account's choice): the docs' scripted fallback (flash, then voice) goes through; a workflow is a scope of its own.
    await setFraud(t, a.account_id, { liveVerification: 'per_method' });
    const sms = await verify(t, a.auth, { phone_number: '+447700900342', method: 'sms' });
    expect((await verify(t, a.auth, { phone_number: '+447700900342', method: 'voice' })).status).toBe(201);
    expect((await verify(t, a.auth, { phone_number: '+447700900342', method: 'sms' })).body.request_id).toBe(sms.body.request_id);
    const wf = await verify(t, a.auth, { phone_number: '+447700900342', workflow: [{ method: 'voice', timeout_seconds: 30 }, { method: 'sms' }] });
    expect(wf.status).toBe(201);
    const wf2 = await verify(t, a.auth, { phone_number: '+447700900342', method: 'auto' });
    expect([wf2.status, wf2.body.request_id]).toEqual([409, wf.body.request_id]);
    // The live key names neither the number nor the account in clear.
    for (const k of await t.redis.keys(`${t.config.redis.prefix}:live:*`)) expect(k).not.toMatch(/447700|\+44/);
  });

  it('a request refused by a velocity window, or for its balance, leaves neither its live pointer nor its send behind', async () => {
    const t = await start({ fraud: { velocity: { perIp: { limit: 1, windowSeconds: 60 }, perNumber: { limit: 1, windowSeconds: 60 } } } });
    const a = await t.account({ balance: 0.005 });
    const liveOf = async (): Promise<string[]> => {
      const names = await t.redis.keys(`${t.config.redis.prefix}:live:*`);
      return Promise.all(names.map(async (k) => (await t.redis.get(k)) ?? ''));
    };
    const ip = '198.51.100.9';
    const first = await verify(t, a.auth, { phone_number: '+447700900351', client_ip: ip });
    expect(first.status).toBe(201);
    // Refused by the per-IP window after its pointer was claimed: the pointer goes with the refusal.
    const limited = await verify(t, a.auth, { phone_number: '+447700900352', client_ip: ip });
    expect([limited.status, limited.body.limit]).toEqual([429, 'per-IP']);
    expect(await liveOf()).toEqual([first.body.request_id]);
    // Refused by the create (402: 0.001 GBP left, a flash call costs 0.004) after the pointer and the send: both go.
    const broke = await verify(t, a.auth, { phone_number: '+447700900352' });
    expect([broke.status, broke.body.error]).toEqual([402, 'insufficient_balance']);
    expect(await liveOf()).toEqual([first.body.request_id]);
    expect(await t.redis.exists(t.keys.verification(String(broke.body.request_id ?? 'none')))).toBe(0);
    // Topped up, the number goes out: not a 409 naming a refused request, nor a 429 of its per-number window (limit 1).
    await t.accounts.topUp(a.account_id, 1);
    const after = await verify(t, a.auth, { phone_number: '+447700900352' });
    expect(after.status).toBe(201);
    expect((await liveOf()).sort()).toEqual([first.body.request_id, after.body.request_id].sort());
    expect((await verify(t, a.auth, { phone_number: '+447700900352' })).status).toBe(409);
    expect((await t.accounts.get(a.account_id)).balance).toBeCloseTo(0.005 + 1 - 2 * 0.004, 6);
  });

  it('concurrent requests for one number: exactly one is created, the others get its id', async () => {
    const t = await start({});
    const a = await t.account();
    const all = await Promise.all(Array.from({ length: 8 }, () => verify(t, a.auth, { phone_number: '+447700900343' })));
    const created = all.filter((r) => r.status === 201);
    expect(created).toHaveLength(1);
    for (const r of all.filter((x) => x.status !== 201)) {
      expect([r.status, r.body.request_id]).toEqual([409, created[0]!.body.request_id]);
    }
    expect((await t.accounts.get(a.account_id)).balance).toBeCloseTo(10 - 0.004, 6);
  });

  it('resend: same request, new job id, billed, refused while the previous send is unfinished, 6th send refused', async () => {
    const t = await start({}); // api role: jobs stay queued; the worker's claim is simulated
    const a = await t.account();
    const first = await verify(t, a.auth, { phone_number: '+447700900344' });
    const id = String(first.body.request_id);
    const key = t.keys.verification(id);
    const queued = await verify(t, a.auth, { phone_number: '+447700900344', resend: true });
    expect([queued.status, queued.body.error, queued.body.request_id]).toEqual([409, 'verification_pending', id]);
    expect(String(queued.body.message)).toMatch(/still queued/);
    await t.redis.hset(key, 'dial_started', String(Date.now()));
    const ringing = await verify(t, a.auth, { phone_number: '+447700900344', resend: true });
    expect(String(ringing.body.message)).toMatch(/still in progress/);
    // A call that ended without ringing (its `failed` event not applied yet): no resend, its failure ends the
    // request (a resend paid now would be dropped by the worker once the request has failed).
    await t.redis.hset(key, { outcome: 'busy' });
    const afterBusy = await verify(t, a.auth, { phone_number: '+447700900344', resend: true });
    expect([afterBusy.status, afterBusy.body.error, afterBusy.body.request_id]).toEqual([409, 'verification_pending', id]);
    expect(String(afterBusy.body.message)).toMatch(/finished meanwhile/);
    expect((await t.accounts.get(a.account_id)).balance).toBeCloseTo(10 - 0.004, 6);

    const queue = new Queue(QUEUE_NAMES.flash_call, { connection: t.redis, prefix: t.keys.bullPrefix() });
    try {
      for (let send = 2; send <= 5; send++) {
        // As a worker would: the previous call dialled, rang and finished.
        await t.redis.hset(key, { dial_started: String(Date.now()), rang_at: String(Date.now()), outcome: 'cancelled', status: 'delivered' });
        const encBefore = await t.redis.hget(key, 'code_enc');
        const r = await verify(t, a.auth, { phone_number: '+447700900344', resend: true });
        expect(r.status).toBe(200);
        expect(r.body).toMatchObject({ request_id: id, method: 'flash_call', sends: send, cost: { amount: 0.004, currency: 'GBP' } });
        expect((await queue.getJob(`${id}-r${send}`))?.data).toEqual({ request_id: id });
        // The claim is open again for exactly that job; a flash resend has a new code (new CLI).
        expect(await t.redis.hget(key, 'dial_started')).toBeNull();
        expect(await t.redis.hget(key, 'code_enc')).not.toBe(encBefore);
      }
      await t.redis.hset(key, { dial_started: String(Date.now()), rang_at: String(Date.now()), outcome: 'cancelled' });
      const sixth = await verify(t, a.auth, { phone_number: '+447700900344', resend: true });
      expect([sixth.status, sixth.body.error, sixth.body.request_id]).toEqual([429, 'rate_limited', id]);
      expect(String(sixth.body.message)).toMatch(/already sent 5 times/);
      // Retry-After: when the request expires (a new one can be started then); the rate-limit headers agree.
      const expiresIn = (Number(await t.redis.hget(key, 'expires_at')) - Date.now()) / 1000;
      expect(Math.abs(Number(sixth.headers.get('retry-after')) - expiresIn)).toBeLessThanOrEqual(2);
      expect(sixth.headers.get('x-ratelimit-remaining')).toBe('0');
    } finally {
      await queue.close();
    }
    expect((await t.accounts.get(a.account_id)).balance).toBeCloseTo(10 - 5 * 0.004, 6);
    const record = await t.redis.hgetall(key);
    expect([record.sends, record.cost, record.send_cost]).toEqual(['5', String(5 * 4000), '4000']);
    // GET shows what the request cost: all five sends.
    const shown = await http(`${t.url}/v1/verify/${id}`, { auth: a.auth });
    expect(shown.body.cost).toEqual({ amount: 0.02, currency: 'GBP' });
    const usage = await http(`${t.url}/v1/usage`, { auth: a.auth });
    expect(usage.body).toMatchObject({ by_method: { flash_call: { count: 5, cost: 0.02 } } });
  });

  it('a resend whose job cannot be queued is taken back whole: money, count, the previous send and its code', async () => {
    const t = await start({});
    const a = await t.account();
    const first = await verify(t, a.auth, { phone_number: '+447700900347' });
    const id = String(first.body.request_id);
    const key = t.keys.verification(id);
    // As a worker would: the first call rang.
    await t.redis.hset(key, { dial_started: '1700000000000', rang_at: '1700000000500', outcome: 'cancelled', status: 'delivered' });
    const code = await codeOf(t, id);
    const before = await t.redis.hgetall(key);
    const fraud = new FraudControls({ redis: t.redis, keys: t.keys, sealer: t.sealer, config: t.config, events: { publish: async () => '0-0' }, logger: pino({ level: 'silent' }) });
    const account = await t.accounts.get(a.account_id);
    const failing = { enqueue: async () => Promise.reject(new Error('queue unavailable: Redis did not answer')) };
    const deps = { redis: t.redis, keys: t.keys, sealer: t.sealer, config: t.config, queue: failing, fraud, logger: pino({ level: 'silent' }) };
    await expect(resendLive(deps, account, { requestId: id, method: 'flash_call' }, { e164: '+447700900347', country: 'GB' }, await fraud.policy(a.account_id), undefined)).rejects.toMatchObject({
      code: 'service_unavailable',
    });
    const after = await t.redis.hgetall(key);
    // The record as it was: the previous send dialled and rang (a cancel would not refund it again), its code.
    expect(after).toEqual(before);
    expect(await codeOf(t, id)).toBe(code);
    expect((await t.accounts.get(a.account_id)).balance).toBeCloseTo(10 - 0.004, 6);
    const usage = await http(`${t.url}/v1/usage`, { auth: a.auth });
    expect(usage.body).toMatchObject({ by_method: { flash_call: { count: 1, cost: 0.004 } } });
    const checked = await http(`${t.url}/v1/verify/check`, { auth: a.auth, body: { request_id: id, code } });
    expect([checked.status, checked.body.status]).toEqual([200, 'verified']);
  });

  it('a voice resend repeats the same code', async () => {
    const t = await start({});
    const a = await t.account();
    const first = await verify(t, a.auth, { phone_number: '+447700900345', method: 'voice', code_length: 6 });
    const id = String(first.body.request_id);
    const code = await codeOf(t, id);
    await t.redis.hset(t.keys.verification(id), { dial_started: String(Date.now()), answered_at: String(Date.now()), outcome: 'played', status: 'delivered' });
    const r = await verify(t, a.auth, { phone_number: '+447700900345', method: 'voice', resend: true });
    expect([r.status, r.body.sends, r.body.code_length]).toEqual([200, 2, 6]);
    expect(await codeOf(t, id)).toBe(code);
  });

  it('a flash resend dials again with a new caller ID; the new code verifies, the old one no longer does', async () => {
    const t = await startWithSipp('uas-ring-cancel', 2);
    const a = await t.account();
    const first = await verify(t, a.auth, { phone_number: '+447700900346' });
    const id = String(first.body.request_id);
    const key = t.keys.verification(id);
    const invite1 = await uas!.waitForMessage((m) => m.method === 'INVITE', 10_000);
    await waitFor(async () => (await t.redis.hget(key, 'outcome')) === 'cancelled', 10_000);
    const resent = await verify(t, a.auth, { phone_number: '+447700900346', resend: true });
    expect([resent.status, resent.body.request_id, resent.body.sends]).toEqual([200, id, 2]);
    await waitFor(async () => uas!.requests('INVITE').length >= 2, 10_000);
    const cli1 = sipUriUser(invite1.header('from'))!;
    const cli2 = sipUriUser(uas!.requests('INVITE')[1]!.header('from'))!;
    expect(cli2).not.toBe(cli1);
    await waitFor(async () => (await t.redis.hget(key, 'outcome')) === 'cancelled', 10_000);
    expect(await t.redis.hget(key, 'status')).toBe('delivered');
    const check = (code: string) => http(`${t.url}/v1/verify/check`, { auth: a.auth, body: { request_id: id, code } });
    if (cli1.slice(-4) !== cli2.slice(-4)) expect((await check(cli1.slice(-4))).body.error).toBe('invalid_code');
    expect((await check(cli2.slice(-4))).body).toMatchObject({ request_id: id, status: 'verified' });
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    expect((await t.accounts.get(a.account_id)).balance).toBeCloseTo(10 - 2 * 0.004, 6);
  }, 60_000);
});

describe('test numbers', () => {
  it('never reach the network, are delivered at once, accept the configured code and cost nothing', async () => {
    const t = await startWithSipp('uas-ring-cancel', 1, { fraud: { testNumbers: [{ number: '+447700900999', code: '4321' }] } });
    const a = await t.account();
    const created = await verify(t, a.auth, { phone_number: '+447700900999' });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ status: 'sent', cost: { amount: 0, currency: 'GBP' }, code_length: 4 });
    const id = String(created.body.request_id);
    await waitFor(async () => (await http(`${t.url}/v1/verify/${id}`, { auth: a.auth })).body.status === 'delivered', 5000);
    const delivered = (await readEvents(t.redis, t.keys)).find((e) => e.request_id === id && e.status === 'delivered');
    expect(JSON.parse(delivered!.detail!)).toEqual({ test_number: true });
    // Test numbers are exempt from the one-live rule (automated tests run in parallel).
    expect((await verify(t, a.auth, { phone_number: '+447700900999' })).status).toBe(201);
    const wrong = await http(`${t.url}/v1/verify/check`, { auth: a.auth, body: { request_id: id, code: '1234' } });
    expect(wrong.body.error).toBe('invalid_code');
    const ok = await http(`${t.url}/v1/verify/check`, { auth: a.auth, body: { request_id: id, code: '4321' } });
    expect(ok.body).toEqual({ request_id: id, status: 'verified', phone_number: '+447700900999' });
    // An account's own test numbers (6 digits for voice).
    await setFraud(t, a.account_id, { testNumbers: [{ number: '+447700900998', code: '246810' }] });
    // Stored sealed: neither the number nor the code that verifies it is in Redis in clear.
    const stored = (await t.redis.hget(t.keys.account(a.account_id), 'fraud'))!;
    expect(stored).not.toMatch(/7700900998|246810/);
    expect(t.sealer.open(stored, 'account-fraud')).toContain('+447700900998');
    const shown = await http(`${t.url}/admin/v1/accounts/${a.account_id}/fraud`, { auth: `Bearer ${ADMIN}` });
    expect(shown.body).toMatchObject({ overrides: { testNumbers: [{ number: '+447700900998', code: '246810' }] } });
    const voice = await verify(t, a.auth, { phone_number: '+447700900998', method: 'voice' });
    expect(voice.body).toMatchObject({ code_length: 6, cost: { amount: 0 } });
    const vok = await http(`${t.url}/v1/verify/check`, { auth: a.auth, body: { request_id: voice.body.request_id, code: '246810' } });
    expect(vok.status).toBe(200);
    const flash6 = await verify(t, a.auth, { phone_number: '+447700900998' });
    expect([flash6.status, flash6.body.error]).toEqual([400, 'invalid_request']);

    expect((await t.accounts.get(a.account_id)).balance).toBe(10);
    // Never sent, so never in the conversion counters: neither sent nor verified.
    const conv = await t.redis.hgetall(t.keys.conversion(new Date().toISOString().slice(0, 10)));
    expect(Object.keys(conv).filter((k) => k.startsWith('country:'))).toEqual([]);
    expect(await (await fetch(`${t.url}/metrics`)).text()).not.toMatch(/flashverify_conversion_(sent|verified)_total\{/);
    await sleep(500);
    expect(uas!.requests()).toEqual([]);
  }, 30_000);
});

describe('conversion counters', () => {
  it('count each send in Redis with its charge, by the create script, at once and with the hash\'s TTL; in the metrics too', async () => {
    const t = await start({});
    const a = await t.account();
    const day = t.keys.conversion(new Date().toISOString().slice(0, 10));
    expect((await verify(t, a.auth, { phone_number: '+447700900401' })).status).toBe(201);
    expect((await verify(t, a.auth, { phone_number: '+447700900402', method: 'voice' })).status).toBe(201);
    // In Redis as soon as the 201 is answered: no batch to wait for (countSent.lua).
    expect(await t.redis.hgetall(day)).toEqual({ 'country:GB:flash_call:sent': '1', 'country:GB:voice:sent': '1' });
    expect(await t.redis.ttl(day)).toBeGreaterThan(399 * 24 * 3600);
    expect(await (await fetch(`${t.url}/metrics`)).text()).toContain('flashverify_conversion_sent_total{country="GB",method="voice"} 1');
  });
});

describe('conversion counters and refunds', () => {
  it('a send that never reached the network leaves the country\'s `sent` again (refunded attempt)', async () => {
    const port = await findFreePort();
    const t = await start({ sip: { timers: { t1Ms: 500 }, trunks: [{ name: 'dead', uri: `sip:127.0.0.1:${port}` }] } }, 'all');
    const a = await t.account();
    const day = t.keys.conversion(new Date().toISOString().slice(0, 10));
    const created = await verify(t, a.auth, { phone_number: '+447700900403' });
    expect(created.status).toBe(201);
    const failed = await waitFor(async () => {
      const r = await http(`${t.url}/v1/verify/${String(created.body.request_id)}`, { auth: a.auth });
      return r.body.status === 'failed' ? r.body : undefined;
    }, 10_000);
    expect(failed.failure_reason).toBe('unreachable');
    // Counted when it was created (by the create script, with the charge), taken out with the refund: sent 0.
    await waitFor(async () => (await t.redis.hget(day, 'country:GB:flash_call:sent')) === '0', 5_000);
    // And it stays there: nothing counts it again (the refund is made once).
    await new Promise((r) => setTimeout(r, 600));
    expect(await t.redis.hget(day, 'country:GB:flash_call:sent')).toBe('0');
    expect(await t.redis.ttl(day)).toBeGreaterThan(399 * 24 * 3600);
  });
});

describe('DID range health and quarantine', () => {
  const logger = pino({ level: 'silent' });

  it('quarantines a range whose calls are rejected, or whose sends are not verified, and releases it', async () => {
    const t = await start({});
    let now = Date.parse('2026-03-04T12:00:00Z');
    const health = new RangeHealth({
      redis: t.redis,
      keys: t.keys,
      // Judged on every outcome (the engine judges a range at most once per judgeIntervalMs).
      config: { enabled: true, minSample: 4, maxRejectRatio: 0.5, minConversionRatio: 0.25, windowSeconds: 600, conversionGraceSeconds: 60, quarantineSeconds: 60, judgeIntervalMs: 0 },
      ranges: ['+44190873', '+44190874'],
      logger,
      now: () => now,
      cacheMs: 0,
    });
    const A = '+44190873';
    const B = '+44190874';
    // Rejected: 3 of 4 refused with 403/603 (> 0.5) once the sample is big enough.
    expect(await health.recordDial(A, { sent: false, rejected: true })).toBeUndefined();
    expect(await health.recordDial(A, { sent: true, rejected: false })).toBeUndefined();
    expect(await health.recordDial(A, { sent: false, rejected: true })).toBeUndefined();
    expect(await health.recordDial(A, { sent: false, rejected: true })).toBe('rejected');
    expect(await health.usable(A)).toBe(false);
    expect(await health.usable(B)).toBe(true);
    expect([...(await health.quarantined())]).toEqual([A]);
    await health.release(A);
    expect(await health.usable(A)).toBe(true);
    expect((await health.stats(A)).attempts).toBe(0); // judged afresh after a quarantine

    // Unverified: 4 sends, 1 verified ... but only judged once the grace period has passed.
    for (let i = 0; i < 4; i++) await health.recordDial(B, { sent: true, rejected: false });
    await health.recordVerified(B, now);
    now += 30_000;
    expect(await health.evaluate(B)).toBeUndefined(); // users may still be typing
    now += 120_000;
    expect(await health.stats(B)).toMatchObject({ sent: 4, verified: 1, judgedSent: 4, judgedVerified: 1 });
    expect(await health.evaluate(B)).toBeUndefined(); // 1/4 is not below 0.25
    await health.recordDial(B, { sent: true, rejected: false }, now - 150_000); // with the first four
    expect(await health.evaluate(B)).toBe('unverified'); // 1/5
    expect(await health.usable(B)).toBe(false);
    // The quarantine lapses by itself.
    expect(await t.redis.ttl(t.keys.rangeQuarantine(B))).toBeGreaterThan(50);

    // Calls made while A was quarantined (every range was) and their verifications: in the day's counters, not in
    // the window A is judged on once back (the fraud controls pass judged=false for them).
    await health.release(A);
    const day = t.keys.conversion(new Date(now).toISOString().slice(0, 10));
    const dayBefore = Number((await t.redis.hget(day, `range:${A}:sent`)) ?? 0);
    for (let i = 0; i < 5; i++) expect(await health.recordDial(A, { sent: true, rejected: false }, now, false)).toBeUndefined();
    await health.recordVerified(A, now, now, false);
    await health.flush();
    expect(await health.stats(A)).toMatchObject({ attempts: 0, sent: 0, verified: 0 });
    expect(Number(await t.redis.hget(day, `range:${A}:sent`))).toBe(dayBefore + 5);
    expect(Number(await t.redis.hget(day, `range:${A}:verified`))).toBe(1);
  });

  it('judges a range at most once per judgeIntervalMs: outcomes in between are counted, and judged at the next judgement', async () => {
    const t = await start({});
    let now = Date.parse('2026-03-04T12:00:00Z');
    const health = new RangeHealth({
      redis: t.redis,
      keys: t.keys,
      config: { enabled: true, minSample: 4, maxRejectRatio: 0.5, minConversionRatio: 0, windowSeconds: 600, conversionGraceSeconds: 60, quarantineSeconds: 60, judgeIntervalMs: 1000 },
      ranges: ['+4419087302'],
      logger,
      now: () => now,
      cacheMs: 0,
    });
    const A = '+4419087302';
    for (let i = 0; i < 6; i++) expect(await health.recordDial(A, { sent: false, rejected: true })).toBeUndefined();
    expect(await health.stats(A)).toMatchObject({ attempts: 6, rejected: 6 });
    expect(await health.usable(A)).toBe(true);
    now += 1000;
    await health.recordDial(A, { sent: false, rejected: true });
    expect(await t.redis.get(t.keys.rangeQuarantine(A))).toBe('rejected');
    expect(await health.usable(A)).toBe(false);
    // Counters carry a TTL although they are no longer set in a MULTI with every increment.
    await health.release(A);
    await health.recordDial(A, { sent: true, rejected: false });
    await health.flush(); // not judged yet (within judgeIntervalMs): still in the batch
    expect(await t.redis.pttl(t.keys.rangeBucket(A, now - (now % 50_000)))).toBeGreaterThan(0);
  });

  it('end to end: a range whose calls ring but are never verified is quarantined (unverified); a verified call counts for its range', async () => {
    const A = '+44190873';
    const B = '+44190874';
    const t = await startWithSipp('uas-ring-cancel', 16, {
      numbers: { ranges: [{ prefix: A, country: 'GB' }, { prefix: B, country: 'GB' }] },
      // One-second buckets judged as soon as they end: sends of a second ago are the cohort.
      fraud: { rangeHealth: { minSample: 3, maxRejectRatio: 0.5, minConversionRatio: 0.5, windowSeconds: 12, conversionGraceSeconds: 0, quarantineSeconds: 600, judgeIntervalMs: 0 } },
    });
    // B has a good history (every send verified): a few unverified calls will not tip it over.
    const health = new RangeHealth({ redis: t.redis, keys: t.keys, config: t.config.fraud.rangeHealth, ranges: [A, B], logger });
    for (let i = 0; i < 10; i++) {
      await health.recordDial(B, { sent: true, rejected: false });
      await health.recordVerified(B, Date.now());
    }
    const a = await t.account();
    const ranges: string[] = [];
    for (let i = 0; i < 14 && !(await t.redis.exists(t.keys.rangeQuarantine(A))); i++) {
      const r = await verify(t, a.auth, { phone_number: `+4477009004${String(i).padStart(2, '0')}` });
      expect(r.status).toBe(201);
      const key = t.keys.verification(String(r.body.request_id));
      // Rang (delivered), and the call is over (its outcome, and so its range's counters, are written).
      await waitFor(async () => (await t.redis.hget(key, 'outcome')) === 'cancelled', 10_000);
      ranges.push((await t.redis.hget(key, 'cli_range'))!);
      // Only the very first user types the code.
      if (i === 0) expect((await http(`${t.url}/v1/verify/check`, { auth: a.auth, body: { request_id: r.body.request_id, code: await codeOf(t, String(r.body.request_id)) } })).status).toBe(200);
    }
    expect(await t.redis.get(t.keys.rangeQuarantine(A))).toBe('unverified');
    expect(await t.redis.exists(t.keys.rangeQuarantine(B))).toBe(0);
    expect(ranges).toContain(A);
    expect(t.logs.some((l) => l.includes('"level":40') && l.includes(`DID range ${A} quarantined (calls not verified)`))).toBe(true);
    const metrics = await (await fetch(`${t.url}/metrics`)).text();
    expect(metrics).toContain(`flashverify_range_quarantined{range="${A}"} 1`);
    // The first call's verification was counted for its range, per day.
    const day = new Date().toISOString().slice(0, 10);
    expect((await t.redis.hgetall(t.keys.conversion(day)))[`range:${ranges[0]}:verified`]).toBe('1');
    // The next call uses B.
    await sleep(1100); // the selector's view of the quarantine is at most 1 s old
    const next = await verify(t, a.auth, { phone_number: '+447700900499' });
    await waitFor(async () => (await t.redis.hget(t.keys.verification(String(next.body.request_id)), 'cli_range')) !== null, 10_000);
    expect(await t.redis.hget(t.keys.verification(String(next.body.request_id)), 'cli_range')).toBe(B);
    // B is not quarantined: the call's outcome and its verification count for B's judgement.
    expect(await t.redis.hget(t.keys.verification(String(next.body.request_id)), 'cli_quarantined')).toBe('0');
  }, 90_000);

  it('every range quarantined: a plain flash call and a workflow\'s flash step use one all the same, marked so that neither their outcome nor their verification is judged', async () => {
    const A = '+44190873';
    const t = await startWithSipp('uas-ring-cancel', 2, { numbers: { ranges: [{ prefix: A, country: 'GB' }] } });
    await t.redis.set(t.keys.rangeQuarantine(A), 'unverified', 'EX', 600);
    await sleep(1100); // the selector's view of the quarantine is at most 1 s old
    const a = await t.account();
    const plain = await verify(t, a.auth, { phone_number: '+447700900481', method: 'flash_call' });
    const workflow = await verify(t, a.auth, { phone_number: '+447700900482', workflow: [{ method: 'flash_call', timeout_seconds: 30 }, { method: 'sms' }] });
    for (const r of [plain, workflow]) {
      expect(r.status, JSON.stringify(r.body)).toBe(201);
      const key = t.keys.verification(String(r.body.request_id));
      await waitFor(async () => (await t.redis.hget(key, 'rang_at')) ?? undefined, 10_000);
      expect(await t.redis.hmget(key, 'cli_range', 'cli_quarantined')).toEqual([A, '1']);
      expect((await http(`${t.url}/v1/verify/check`, { auth: a.auth, body: { request_id: r.body.request_id, code: await codeOf(t, String(r.body.request_id)) } })).body.status).toBe('verified');
    }
    // The day counts both verifications for A; its judged window none of them.
    const health = new RangeHealth({ redis: t.redis, keys: t.keys, config: t.config.fraud.rangeHealth, ranges: [A], logger });
    await sleep(300); // the engine's counter batch (250 ms)
    expect(await health.stats(A)).toMatchObject({ attempts: 0, sent: 0, verified: 0 });
    const day = new Date().toISOString().slice(0, 10);
    expect((await t.redis.hgetall(t.keys.conversion(day)))[`range:${A}:verified`]).toBe('2');
  }, 30_000);

  it('end to end: a range rejected with 603 is quarantined, the next call uses the other range, the gauge shows it', async () => {
    const A = '+44190873';
    const B = '+44190874';
    const t = await startWithSipp('uas-decline-603', 6, {
      numbers: { ranges: [{ prefix: A, country: 'GB' }, { prefix: B, country: 'GB' }] },
      fraud: { rangeHealth: { minSample: 2, maxRejectRatio: 0.5, minConversionRatio: 0, quarantineSeconds: 600, judgeIntervalMs: 0 } },
    });
    // B has a good history: its one 603 will not tip it over.
    const health = new RangeHealth({ redis: t.redis, keys: t.keys, config: t.config.fraud.rangeHealth, ranges: [A, B], logger });
    for (let i = 0; i < 10; i++) await health.recordDial(B, { sent: true, rejected: false });
    const a = await t.account();
    const clis: string[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await verify(t, a.auth, { phone_number: `+44770090035${i}` });
      expect(r.status).toBe(201);
      await waitFor(async () => (await t.redis.hget(t.keys.verification(String(r.body.request_id)), 'status')) === 'failed', 10_000);
      clis.push(sipUriUser(uas!.requests('INVITE')[i]!.header('from'))!);
      if (await t.redis.exists(t.keys.rangeQuarantine(A))) break;
    }
    expect(await t.redis.get(t.keys.rangeQuarantine(A))).toBe('rejected');
    expect(await t.redis.exists(t.keys.rangeQuarantine(B))).toBe(0);
    expect(t.logs.some((l) => l.includes('"level":40') && l.includes(`DID range ${A} quarantined`))).toBe(true);
    // The next calls all use B.
    await sleep(1100); // the selector's view of the quarantine is at most 1 s old
    for (let i = 0; i < 2; i++) {
      const n = uas!.requests('INVITE').length;
      const r = await verify(t, a.auth, { phone_number: `+44770090036${i}` });
      await waitFor(async () => (await t.redis.hget(t.keys.verification(String(r.body.request_id)), 'status')) === 'failed', 10_000);
      expect(sipUriUser(uas!.requests('INVITE')[n]!.header('from'))!.startsWith(B)).toBe(true);
    }
    expect(clis.some((c) => c.startsWith(A))).toBe(true);
    const metrics = await (await fetch(`${t.url}/metrics`)).text();
    expect(metrics).toContain(`flashverify_range_quarantined{range="${A}"} 1`);
    expect(metrics).toContain(`flashverify_range_quarantined{range="${B}"} 0`);
    // Conversion counters per day: rejected calls per range, sends per country.
    const day = new Date().toISOString().slice(0, 10);
    const conv = await t.redis.hgetall(t.keys.conversion(day));
    expect(Number(conv[`range:${A}:rejected`])).toBeGreaterThanOrEqual(2);
    expect(Number(conv['country:GB:flash_call:sent'])).toBeGreaterThanOrEqual(4);
  }, 90_000);
});
