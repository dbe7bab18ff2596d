import { Redis } from 'ioredis';
import { pino } from 'pino';
import type { FastifyInstance } from 'fastify';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { AccountStore, type CreatedAccount } from '../../src/accounts/account-store.js';
import { buildApi } from '../../src/api/app.js';
import { Sealer } from '../../src/crypto/sealer.js';
import { EventPublisher } from '../../src/events/event-publisher.js';
import { StatusConsumer } from '../../src/events/status-consumer.js';
import { WorkflowAdvancer } from '../../src/events/workflow-advancer.js';
import { Metrics } from '../../src/metrics/metrics.js';
import { FraudControls } from '../../src/verification/fraud-controls.js';
import { Keys } from '../../src/store/keys.js';
import { scripts } from '../../src/store/scripts.js';
import { utcDay, type Method } from '../../src/verification/types.js';
import { ExpirySweeper } from '../../src/verification/expiry-sweeper.js';
import { VerificationService } from '../../src/verification/verification-service.js';
import { REDIS_URL, deletePrefix, testConfig } from '../helpers/engine.js';
import { startServiceOnRedis, type ServiceOnRedis } from '../helpers/service-on-redis.js';

/** Billing per attempt actually sent, on the paths where a request ends without its attempt having left. */
describe('refunds of attempts that never left', () => {
  let s: ServiceOnRedis;

  beforeAll(async () => {
    s = await startServiceOnRedis(['flash_call', 'voice', 'sms']);
  });
  afterAll(async () => {
    await s?.stop();
  });

  it('cancel refunds an SMS claimed but not submitted (waiting for a bind or throttled); one that may have left stays billed', async () => {
    const before = { balance: await s.balance(), sms: await s.usage('sms') };
    const noBind = await s.service.create(s.account, { phone_number: '+447700900401', method: 'sms' });
    const throttled = await s.service.create(s.account, { phone_number: '+447700900402', method: 'sms' });
    const submitted = await s.service.create(s.account, { phone_number: '+447700900403', method: 'sms' });
    // The SMS job records dial_started at its first claim, before any submit_sm (sms-processor.ts).
    await s.redis.hset(s.keys.verification(noBind.request_id), 'dial_started', '1');
    await s.redis.hset(s.keys.verification(throttled.request_id), 'dial_started', '1', 'sms_state', 'retry');
    await s.redis.hset(s.keys.verification(submitted.request_id), 'dial_started', '1', 'sms_state', 'unconfirmed');
    const charged = await s.cost(submitted.request_id);
    for (const c of [noBind, throttled, submitted]) expect((await s.service.cancel(s.account, c.request_id)).status).toBe('canceled');
    expect(await s.balance()).toBe(before.balance - charged);
    expect(await s.usage('sms')).toBe(before.sms + 1);
    expect([await s.cost(noBind.request_id), await s.cost(throttled.request_id), await s.cost(submitted.request_id)]).toEqual([0, 0, charged]);
  });

  it('the last wrong code ends the request and refunds an attempt that never left (an SMS throttled, a call in a backlog), once; one that may have left stays billed', async () => {
    const before = { balance: await s.balance(), sms: await s.usage('sms'), flash: await s.usage('flash_call') };
    const throttled = await s.service.create(s.account, { phone_number: '+447700900404', method: 'sms' });
    const backlog = await s.service.create(s.account, { phone_number: '+447700900405', method: 'flash_call' });
    const workflowStep = await s.service.create(s.account, { phone_number: '+447700900407', workflow: [{ method: 'sms', timeout_seconds: 20 }, { method: 'flash_call' }] });
    const accepted = await s.service.create(s.account, { phone_number: '+447700900406', method: 'sms' });
    await s.redis.hset(s.keys.verification(throttled.request_id), 'dial_started', '1', 'sms_state', 'retry');
    await s.redis.hset(s.keys.verification(workflowStep.request_id), 'dial_started', '1', 'sms_state', 'retry');
    await s.redis.hset(s.keys.verification(accepted.request_id), 'dial_started', '1', 'sms_state', 'accepted');
    const charged = await s.cost(accepted.request_id);
    for (const c of [throttled, backlog, workflowStep, accepted]) {
      const code = s.sealer.open((await s.redis.hget(s.keys.verification(c.request_id), 'code_enc'))!, `code:${c.request_id}`);
      const wrong = code.replace(/\d$/, (d) => String((Number(d) + 1) % 10));
      const answers: unknown[] = [];
      for (let i = 0; i < 4; i++) answers.push(await s.service.check(s.account, { request_id: c.request_id, code: wrong }).catch((e: { code: string }) => e.code));
      expect(answers).toEqual(['invalid_code', 'invalid_code', 'invalid_code', 'verification_expired']);
      expect(await s.redis.hget(s.keys.verification(c.request_id), 'status')).toBe('expired');
    }
    expect(await s.balance()).toBe(before.balance - charged);
    expect(await s.usage('sms')).toBe(before.sms + 1);
    expect(await s.usage('flash_call')).toBe(before.flash);
    expect([await s.cost(throttled.request_id), await s.cost(backlog.request_id), await s.cost(workflowStep.request_id), await s.cost(accepted.request_id)]).toEqual([0, 0, 0, charged]);
    expect(await s.redis.hmget(s.keys.verification(workflowStep.request_id), 'att0_cost', 'att0_refunded')).toEqual(['0', '1']);
    // The sweeper later finds them ended: nothing refunded twice.
    await new ExpirySweeper(s.redis, s.keys, { intervalMs: 50, eventsMaxLen: 1000, batch: 10 }, s.logger, () => Date.now() + 3_600_000).sweep();
    expect(await s.balance()).toBe(before.balance - charged);
  });

  it('resends refused after their earlier messages failed one by one: once every message sent has failed, the request is failed, never put back on one', async () => {
    const phone = '+447700900481';
    const { request_id: id } = await s.service.create(s.account, { phone_number: phone, method: 'sms' });
    const key = s.keys.verification(id);
    const day = utcDay(Date.now());
    const publisher = new EventPublisher(s.redis, s.keys, 1000);
    const accepted = (ids: string) => s.redis.hset(key, 'dial_started', String(Date.now()), 'sms_state', 'accepted', 'sms_message_ids', ids);
    // As resend.ts runs it (the fraud screen aside): the same code, a send of 0.03.
    const resend = async () => {
      const [ok, sends] = (await scripts.resendVerification.run(
        s.redis,
        [s.keys.account(s.account.account_id), key, s.keys.usage(s.account.account_id, day), s.keys.conversion(day), key],
        [s.account.account_id, Date.now(), 30_000, 5, '', '', 3600, 3_600_000, '', 0, ''],
      )) as [string, number];
      expect(ok).toBe('ok');
      return sends;
    };
    const undelivered = (messageId: string) =>
      scripts.settleSms.run(s.redis, [key, publisher.stream, s.keys.smsEarlyReceipt('default', messageId), publisher.orderKey(id)], [
        messageId, 'UNDELIV', '', ...publisher.streamArgs({ request_id: id, account_id: s.account.account_id, method: 'sms', status: 'failed', detail: { reason: 'sms_undeliverable' } }),
      ]);
    const refused = (sends: number) =>
      scripts.settleRefusedResend.run(s.redis, [key, s.keys.account(s.account.account_id), s.keys.usage(s.account.account_id, day), s.keys.conversion(day)], [sends, 'sms']);

    await accepted('m1');
    await resend();
    await accepted('m1 m2');
    expect(await undelivered('m1')).toBe('superseded');
    // m2 may still arrive: the request keeps it.
    expect(await refused(await resend())).toBe('kept');
    const fourth = await resend();
    expect(await undelivered('m2')).toBe('superseded');
    // m1 and m2 have both failed: nothing is on its way.
    expect(await refused(fourth)).toBe('alone');
  });

  // advanceWorkflow-8 as the workflow advancer runs it for a `step_timeout` of step 0 (charged today).
  const advanceKeys = (id: string, accountId: string) => {
    const today = utcDay(Date.now());
    return [s.keys.verification(id), s.keys.account(accountId), s.keys.usage(accountId, today), s.keys.events(), s.keys.usage(accountId, today), s.keys.conversion(today), s.keys.webhookOrder(id), s.keys.conversion(today)];
  };
  const timeOut = (id: string) =>
    scripts.advanceWorkflow.run(s.redis, advanceKeys(id, s.account.account_id), [0, Date.now(), 'sms', 30_000, 'mac', 'enc', 6, 'timeout', 1000, 3600, '', 1000]);

  it('a workflow step that times out before it was dialled is refunded, once; a dialled one is billed', async () => {
    const before = { balance: await s.balance(), flash: await s.usage('flash_call') };
    const workflow = [{ method: 'flash_call', timeout_seconds: 20 }, { method: 'sms' }];
    const backlog = await s.service.create(s.account, { phone_number: '+447700900411', workflow });
    const dialled = await s.service.create(s.account, { phone_number: '+447700900412', workflow });
    await s.redis.hset(s.keys.verification(dialled.request_id), 'dial_started', '1');
    const flashCost = Number(await s.redis.hget(s.keys.verification(dialled.request_id), 'att0_cost'));
    expect(await timeOut(backlog.request_id)).toEqual(['ok', 1]);
    expect(await timeOut(dialled.request_id)).toEqual(['ok', 1]);
    // The same timeout handled again (redelivered): the step has moved, nothing more refunded.
    expect(await timeOut(backlog.request_id)).toEqual(['moved', 1]);
    expect(await s.balance()).toBe(before.balance - flashCost - 2 * 30_000);
    expect(await s.usage('flash_call')).toBe(before.flash + 1);
    expect(await s.redis.hmget(s.keys.verification(backlog.request_id), 'att0_status', 'att0_cost', 'att0_refunded', 'cost')).toEqual(['timed_out', '0', '1', '30000']);
    expect(await s.redis.hmget(s.keys.verification(dialled.request_id), 'att0_cost', 'att0_refunded')).toEqual([String(flashCost), null]);
  });

  it('the next workflow step of an account suspended meanwhile does not start and is not charged', async () => {
    const other = await new AccountStore(s.redis, s.keys, s.sealer).create({ name: 'suspended later', balance: 10, currency: 'GBP', active: true });
    const w = await s.service.create(other, { phone_number: '+447700900413', workflow: [{ method: 'flash_call', timeout_seconds: 20 }, { method: 'sms' }] });
    await s.redis.hset(s.keys.verification(w.request_id), 'dial_started', '1');
    await s.redis.hset(s.keys.account(other.account_id), 'status', 'suspended');
    const balanceBefore = Number(await s.redis.hget(s.keys.account(other.account_id), 'balance'));
    const result = await scripts.advanceWorkflow.run(
      s.redis,
      advanceKeys(w.request_id, other.account_id),
      [0, Date.now(), 'sms', 30_000, 'mac', 'enc', 6, 'timeout', 1000, 3600, '', 1000],
    );
    expect(result).toEqual(['account_suspended', 1]);
    expect(Number(await s.redis.hget(s.keys.account(other.account_id), 'balance'))).toBe(balanceBefore);
    expect(await s.redis.hmget(s.keys.verification(w.request_id), 'status', 'failure_reason', 'att1_cost')).toEqual(['failed', 'account_suspended', '0']);
  });

  it('an SMS whose request ended after its claim is not sent: the submitting mark is only set while the attempt is wanted', async () => {
    const mark = (id: string, step: number | undefined, now = Date.now()) =>
      scripts.markSmsSubmitting.run(s.redis, [s.keys.verification(id), s.keys.smsInFlight('test')], [step === undefined ? '' : String(step), now, '1', id, 60]);
    const live = await s.service.create(s.account, { phone_number: '+447700900431', method: 'sms' });
    const expired = await s.service.create(s.account, { phone_number: '+447700900432', method: 'sms' });
    const canceled = await s.service.create(s.account, { phone_number: '+447700900433', method: 'sms' });
    const moved = await s.service.create(s.account, { phone_number: '+447700900434', workflow: [{ method: 'sms', timeout_seconds: 20 }, { method: 'voice' }] });
    for (const r of [live, expired, canceled, moved]) await s.redis.hset(s.keys.verification(r.request_id), 'dial_started', '1');
    // The expiry sweeper ran after the claim (the SMS was not submitted yet: refunded); a cancel likewise.
    await s.redis.hset(s.keys.verification(expired.request_id), 'status', 'expired');
    await s.service.cancel(s.account, canceled.request_id);
    await s.redis.hset(s.keys.verification(moved.request_id), 'wf_step', '1');
    expect(await mark(live.request_id, undefined)).toBe(1);
    expect(await s.redis.hget(s.keys.verification(live.request_id), 'sms_state')).toBe('submitting');
    // Past expires_at, even before the sweeper ran.
    expect(await mark(live.request_id, undefined, Date.now() + 3600_000)).toBe(0);
    for (const [r, step] of [[expired, undefined], [canceled, undefined], [moved, 0]] as const) {
      expect(await mark(r.request_id, step)).toBe(0);
      expect(await s.redis.hget(s.keys.verification(r.request_id), 'sms_state')).toBeNull();
    }
  });

  it('a check after the expiry, before the sweeper ran, answers expired and leaves the refund of an unsent SMS to the sweeper', async () => {
    const before = await s.balance();
    const r = await s.service.create(s.account, { phone_number: '+447700900441', method: 'sms' });
    const key = s.keys.verification(r.request_id);
    const past = Date.now() - 1000;
    await s.redis.hset(key, 'dial_started', '1', 'expires_at', String(past)); // claimed, not submitted (no bind)
    await s.redis.zadd(s.keys.expiries(), past, r.request_id);
    await expect(s.service.check(s.account, { request_id: r.request_id, code: '0000' })).rejects.toMatchObject({ code: 'verification_expired' });
    expect(await s.redis.hget(key, 'status')).toBe('sent');
    expect(await new ExpirySweeper(s.redis, s.keys, { intervalMs: 50, eventsMaxLen: 1000, batch: 10 }, s.logger).sweep()).toBeGreaterThanOrEqual(1);
    expect(await s.redis.hmget(key, 'status', 'refunded')).toEqual(['expired', '1']);
    expect(await s.balance()).toBe(before);
  });

  // applyEvent-4 / applyStepEvent-4 as the status consumer runs them for an event of the stream.
  const apply = (id: string, status: 'delivered' | 'failed', refund: boolean, step?: number) =>
    (step === undefined ? scripts.applyEvent : scripts.applyStepEvent).run(
      s.redis,
      [s.keys.verification(id), s.keys.account(s.account.account_id), s.keys.usage(s.account.account_id, utcDay(Date.now())), s.keys.conversion(utcDay(Date.now()))],
      [status, Date.now(), 'failure_reason\ntimeout', refund ? '1' : '0', step ?? '1'],
    );
  const history = async (id: string) => (await s.service.status(s.account, id)).status_history.map((h) => h.status);

  it('an event after the request is final records nothing; a failure that never reached the network is refunded all the same, once', async () => {
    const before = await s.balance();
    // A flash call whose INVITE times out (Timer B) after the request expired: billed at create, then refunded.
    const c = await s.service.create(s.account, { phone_number: '+447700900421', expiry_seconds: 60 });
    await s.redis.hset(s.keys.verification(c.request_id), 'dial_started', '1', 'status', 'expired', 'at_expired', String(Date.now()));
    expect(await apply(c.request_id, 'failed', true)).toBe('expired');
    expect(await apply(c.request_id, 'failed', true)).toBe('expired');
    expect(await apply(c.request_id, 'delivered', false)).toBe('expired');
    expect(await history(c.request_id)).toEqual(['sent', 'expired']);
    expect(await s.redis.hmget(s.keys.verification(c.request_id), 'failure_reason', 'cost', 'refunded')).toEqual([null, '0', '1']);
    expect(await s.balance()).toBe(before);

    // A workflow step's delivery after the request was canceled: no `delivered` in its history.
    const w = await s.service.create(s.account, { phone_number: '+447700900422', workflow: [{ method: 'voice', timeout_seconds: 20 }, { method: 'sms' }] });
    await s.redis.hset(s.keys.verification(w.request_id), 'dial_started', '1');
    await s.service.cancel(s.account, w.request_id);
    expect(await apply(w.request_id, 'delivered', false, 0)).toBe('canceled');
    expect(await history(w.request_id)).toEqual(['sent', 'canceled']);
  });
});

/**
 * A refund leaves the usage (GET /v1/usage) and the per-country conversion `sent` of the day its attempt was charged,
 * whichever path makes it, once. The clock is Date's, faked (timers stay real): a charge at 23:59:58 UTC, its refund
 * after midnight.
 */
describe('refunds across midnight and the conversion `sent` they leave', () => {
  const config = testConfig({ api: { defaultRateLimitPerSecond: 1000 }, fraud: { testNumbers: [{ number: '+447700900555', code: '1234' }] } });
  const keys = new Keys(config.redis.prefix);
  const sealer = new Sealer(Buffer.from(config.security.masterKey, 'hex'));
  const logger = pino({ level: 'silent' });
  const BEFORE_MIDNIGHT = Date.parse('2031-03-04T23:59:58Z');
  let redis: Redis;
  let fraud: FraudControls;
  let service: VerificationService;
  let advancer: WorkflowAdvancer;
  let api: FastifyInstance;
  let account: CreatedAccount;
  let auth: string;

  beforeAll(async () => {
    redis = new Redis(REDIS_URL);
    const accounts = new AccountStore(redis, keys, sealer);
    fraud = new FraudControls({ redis, keys, sealer, config, events: { publish: async () => '0-0' }, logger });
    service = new VerificationService(redis, keys, sealer, config, { enqueue: async () => undefined }, logger, new Set<Method>(['flash_call', 'voice', 'sms']), fraud);
    const jobs = { enqueue: async () => undefined, discard: async () => undefined };
    advancer = new WorkflowAdvancer(redis, keys, 'workflow', 'test', logger, { sealer, config, jobs, timer: { schedule: async () => undefined }, fraud });
    api = buildApi({ config, redis, keys, sealer, accounts, verifications: service, logger });
  });
  // An account of its own per test: its usage days start empty.
  beforeEach(async () => {
    account = await new AccountStore(redis, keys, sealer).create({ name: 'x', balance: 10, currency: 'GBP', active: true });
    auth = 'Basic ' + Buffer.from(`${account.api_key}:${account.api_secret}`).toString('base64');
  });
  afterEach(() => {
    vi.useRealTimers();
    vi.restoreAllMocks();
  });
  afterAll(async () => {
    await fraud.counters.close();
    await api.close();
    await deletePrefix(redis, config.redis.prefix);
    await redis.quit();
  });

  const at = (ms: number) => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(ms);
  };
  const call = async (method: 'GET' | 'POST', url: string, payload?: object) => {
    const r = await api.inject({ method, url, headers: { authorization: auth }, ...(payload ? { payload } : {}) });
    return { status: r.statusCode, body: r.json() as Record<string, unknown> };
  };
  /** GET /v1/usage of one day: by_method. */
  const usageOn = async (day: string) => (await call('GET', `/v1/usage?from=${day}&to=${day}`)).body.by_method;
  const sent = async (day: string, method: Method) => (await fraud.conversion(day))[`country:GB:${method}:sent`] ?? 0;
  /** The status consumer over everything in the stream so far (a refunded failure published by a worker included). */
  const applyEvents = async () => {
    const conn = new Redis(REDIS_URL);
    const consumer = new StatusConsumer(conn, keys, 'status', 'test', logger, new Metrics({ defaultMetrics: false }), { blockMs: 50 });
    await consumer.start();
    await consumer.drain(5000);
    await conn.quit();
  };
  /** A refunded failure of an attempt, as a flash or voice worker publishes it (Timer B: the INVITE never reached the network). */
  const refundedFailure = (id: string, method: Method, step?: number) =>
    new EventPublisher(redis, keys, 1000).publish({
      request_id: id,
      account_id: account.account_id,
      method,
      status: 'failed',
      ...(step !== undefined ? { step } : {}),
      detail: { reason: 'timeout', refund: true },
    });

  it('a workflow step charged before midnight that times out undialled after it is refunded in the day it was charged', async () => {
    at(BEFORE_MIDNIGHT);
    const created = await call('POST', '/v1/verify', { phone_number: '+447700900451', workflow: [{ method: 'flash_call', timeout_seconds: 20 }, { method: 'sms' }] });
    expect(created.status).toBe(201);
    const id = String(created.body.request_id);
    expect(await usageOn('2031-03-04')).toMatchObject({ flash_call: { count: 1, cost: 0.004 } });
    expect(await sent('2031-03-04', 'flash_call')).toBe(1);

    // 22 s later, on the next day: step 0's timer fires, nothing of it was dialled (a backlog).
    at(BEFORE_MIDNIGHT + 22_000);
    expect(await advancer.advance(id, 0, 'timeout')).toBe(1);
    expect(await usageOn('2031-03-04')).toMatchObject({ flash_call: { count: 0, cost: 0 }, sms: { count: 0, cost: 0 } });
    expect(await usageOn('2031-03-05')).toMatchObject({ flash_call: { count: 0, cost: 0 }, sms: { count: 1, cost: 0.03 } });
    expect([await sent('2031-03-04', 'flash_call'), await sent('2031-03-05', 'flash_call'), await sent('2031-03-05', 'sms')]).toEqual([0, 0, 1]);

    // A refunded failure of step 0 reaching the status consumer afterwards (a stray or redelivered event): refunded
    // already, nothing moves again.
    await refundedFailure(id, 'flash_call', 0);
    await applyEvents();
    expect(await usageOn('2031-03-04')).toMatchObject({ flash_call: { count: 0, cost: 0 } });
    expect(await usageOn('2031-03-05')).toMatchObject({ flash_call: { count: 0, cost: 0 }, sms: { count: 1, cost: 0.03 } });
    expect(await sent('2031-03-04', 'flash_call')).toBe(0);
    expect((await call('GET', '/v1/balance')).body.balance).toEqual({ amount: 9.97, currency: 'GBP' });
  });

  it('a cancel racing a resend across midnight refunds the resend in the day it was charged, not the first send', async () => {
    const beforeMidnight = Date.parse('2031-06-30T23:59:58Z');
    at(beforeMidnight);
    const first = await call('POST', '/v1/verify', { phone_number: '+447700900452' });
    const id = String(first.body.request_id);
    const key = keys.verification(id);
    // As the flash worker would: the first call rang (shown: billed), so a resend may be paid.
    await redis.hset(key, { dial_started: String(beforeMidnight), rang_at: String(beforeMidnight + 1000), outcome: 'cancelled', status: 'delivered' });
    // The cancel reads the request; the resend lands, after midnight, before the cancel's script runs.
    const read = redis.hgetall.bind(redis);
    let raced = false;
    vi.spyOn(redis, 'hgetall').mockImplementation((async (k: string) => {
      const h = await read(k);
      if (k === key && !raced) {
        raced = true;
        vi.setSystemTime(beforeMidnight + 3000);
        expect((await call('POST', '/v1/verify', { phone_number: '+447700900452', resend: true })).status).toBe(200);
      }
      return h;
    }) as never);
    expect((await call('POST', `/v1/verify/${id}/cancel`)).body.status).toBe('canceled');
    expect(raced).toBe(true);
    // The resend was not dialled: refunded, out of the day it was charged; the first send stays billed on its day.
    expect(await usageOn('2031-06-30')).toMatchObject({ flash_call: { count: 1, cost: 0.004 } });
    expect(await usageOn('2031-07-01')).toMatchObject({ flash_call: { count: 0, cost: 0 } });
    expect([await sent('2031-06-30', 'flash_call'), await sent('2031-07-01', 'flash_call')]).toEqual([1, 0]);
    expect(await redis.hmget(key, 'sends', 'cost')).toEqual(['2', '4000']);
  });

  it('a cancel takes an attempt that never left out of the conversion `sent`, once; one that may have left stays counted', async () => {
    const day = utcDay(Date.now());
    const before = { flash: await sent(day, 'flash_call'), voice: await sent(day, 'voice'), sms: await sent(day, 'sms') };
    const flash = await call('POST', '/v1/verify', { phone_number: '+447700900461' });
    const step = await call('POST', '/v1/verify', { phone_number: '+447700900462', workflow: [{ method: 'voice', timeout_seconds: 20 }, { method: 'sms' }] });
    const submitted = await call('POST', '/v1/verify', { phone_number: '+447700900463', method: 'sms' });
    await redis.hset(keys.verification(String(submitted.body.request_id)), 'dial_started', '1', 'sms_state', 'submitting');
    for (const r of [flash, step, submitted]) {
      expect((await call('POST', `/v1/verify/${String(r.body.request_id)}/cancel`)).body.status).toBe('canceled');
    }
    const expected = { flash: before.flash, voice: before.voice, sms: before.sms + 1 };
    expect({ flash: await sent(day, 'flash_call'), voice: await sent(day, 'voice'), sms: await sent(day, 'sms') }).toEqual(expected);

    // Canceled again, and refunded failures of the same attempts (stray or redelivered events): nothing is taken out twice.
    for (const r of [flash, step]) expect((await call('POST', `/v1/verify/${String(r.body.request_id)}/cancel`)).body.error).toBe('verification_expired');
    await refundedFailure(String(flash.body.request_id), 'flash_call');
    await refundedFailure(String(step.body.request_id), 'voice', 0);
    await applyEvents();
    expect({ flash: await sent(day, 'flash_call'), voice: await sent(day, 'voice'), sms: await sent(day, 'sms') }).toEqual(expected);
  });

  /**
   * A service of the same deployment whose queue refuses the jobs `refuse` picks (Redis unreachable for BullMQ), after
   * `meanwhile` (what another process does to the request while the add waits for Redis).
   */
  const refusing = (refuse: (jobId: string | undefined) => boolean, meanwhile: (requestId: string) => Promise<unknown> = async () => undefined) =>
    new VerificationService(
      redis,
      keys,
      sealer,
      config,
      {
        enqueue: async (_method, id, jobId) => {
          if (!refuse(jobId)) return;
          await meanwhile(id);
          throw new Error('queue unavailable: Redis did not answer');
        },
      },
      logger,
      new Set<Method>(['flash_call', 'voice', 'sms']),
      fraud,
    );

  it('a request whose job could not be queued is failed and refunded: counted with its charge, its count taken back', async () => {
    at(Date.parse('2031-08-01T12:00:00Z'));
    await expect(refusing(() => true).create(account, { phone_number: '+447700900471' })).rejects.toMatchObject({ code: 'service_unavailable' });
    expect(await usageOn('2031-08-01')).toMatchObject({ flash_call: { count: 0, cost: 0 } });
    expect(await sent('2031-08-01', 'flash_call')).toBe(0);
  });

  it('a resend whose job could not be queued is taken back, its count in the conversion `sent` with it', async () => {
    const first = Date.parse('2031-08-02T12:00:00Z');
    at(first);
    const service = refusing((jobId) => jobId !== undefined); // the first send's job (id = request id) is queued
    const created = await service.create(account, { phone_number: '+447700900472' });
    // As the flash worker would: the first call rang (shown: billed), so a resend may be paid.
    await redis.hset(keys.verification(created.request_id), { dial_started: String(first), rang_at: String(first + 1000), outcome: 'cancelled', status: 'delivered' });
    expect(await sent('2031-08-02', 'flash_call')).toBe(1);
    at(first + 5000);
    await expect(service.create(account, { phone_number: '+447700900472', resend: true })).rejects.toMatchObject({ code: 'service_unavailable' });
    expect(await redis.hget(keys.verification(created.request_id), 'sends')).toBeNull();
    expect(await usageOn('2031-08-02')).toMatchObject({ flash_call: { count: 1, cost: 0.004 } });
    expect(await sent('2031-08-02', 'flash_call')).toBe(1);
  });

  /** What ends a request while the add of its job waits for Redis: the expiry sweeper past its expiry, or a cancel. */
  const endings: { status: string; end(requestId: string): Promise<unknown> }[] = [
    { status: 'expired', end: () => new ExpirySweeper(redis, keys, { intervalMs: 60_000, eventsMaxLen: 1000 }, logger, () => Date.now() + 61_000).sweep() },
    { status: 'canceled', end: (requestId) => service.cancel(account, requestId) },
  ];

  it.each(endings)('a request whose job could not be queued, $status meanwhile, is refunded once', async ({ status, end }) => {
    at(Date.parse('2031-08-04T12:00:00Z'));
    // The conversion hash is the deployment's, shared by this test's cases.
    const sentBefore = await sent('2031-08-04', 'flash_call');
    let id = '';
    const ending = refusing(
      () => true,
      (requestId) => {
        id = requestId;
        return end(requestId);
      },
    );
    await expect(ending.create(account, { phone_number: '+447700900474', expiry_seconds: 60 })).rejects.toMatchObject({ code: 'service_unavailable' });
    // The failure's refund (applyEvent-4) and the expiry's or the cancel's take the same guard, `refunded`: the
    // second one gives nothing back.
    expect(await redis.hmget(keys.verification(id), 'status', 'cost', 'refunded')).toEqual([status, '0', '1']);
    expect((await call('GET', '/v1/balance')).body.balance).toEqual({ amount: 10, currency: 'GBP' });
    expect(await usageOn('2031-08-04')).toMatchObject({ flash_call: { count: 0, cost: 0 } });
    expect(await sent('2031-08-04', 'flash_call')).toBe(sentBefore);
  });

  it.each(endings)(
    'a resend whose job could not be queued, the request $status meanwhile, is refunded once (not again by its take-back) and answers 503',
    async ({ status, end }) => {
      const first = Date.parse('2031-08-05T12:00:00Z');
      at(first);
      const sentBefore = await sent('2031-08-05', 'flash_call');
      // The first send's job (id = request id) is queued; the resend's is not, and the request ends while its add waits.
      const ending = refusing((jobId) => jobId !== undefined, end);
      const created = await ending.create(account, { phone_number: '+447700900475', expiry_seconds: 60 });
      const key = keys.verification(created.request_id);
      // As the flash worker would: the first call rang (shown: billed), so a resend may be paid.
      await redis.hset(key, { dial_started: String(first), rang_at: String(first + 1000), outcome: 'cancelled', status: 'delivered' });
      at(first + 5000);
      await expect(ending.create(account, { phone_number: '+447700900475', resend: true })).rejects.toMatchObject({ code: 'service_unavailable' });
      // The resend's charge came back once (by the expiry or the cancel, which found it undialled); the first send
      // stays billed, and the record shows it as the request's only send.
      expect(await redis.hmget(key, 'status', 'sends', 'cost', 'dial_started')).toEqual([status, null, '4000', String(first)]);
      expect((await call('GET', '/v1/balance')).body.balance).toEqual({ amount: 9.996, currency: 'GBP' });
      expect(await usageOn('2031-08-05')).toMatchObject({ flash_call: { count: 1, cost: 0.004 } });
      expect(await sent('2031-08-05', 'flash_call')).toBe(sentBefore + 1);
    },
  );

  it('a refund of a send never counted (charged before sends were counted with their charge) leaves `sent` at 0, not below', async () => {
    at(Date.parse('2031-08-03T12:00:00Z'));
    const created = await service.create(account, { phone_number: '+447700900473' });
    // As a request of the previous version whose api died before queueing it (the reconciler queued it, nobody counted
    // it): charged, in the usage, not in the conversion hash.
    const conv = keys.conversion('2031-08-03');
    await redis.del(conv);
    expect((await call('POST', `/v1/verify/${created.request_id}/cancel`)).body.status).toBe('canceled');
    expect(await usageOn('2031-08-03')).toMatchObject({ flash_call: { count: 0, cost: 0 } });
    expect(await sent('2031-08-03', 'flash_call')).toBe(0);
    // Nor does the refund create the hash (without a TTL, or with one).
    expect(await redis.exists(conv)).toBe(0);
  });

  it("a test number's expiry takes nothing out of the conversion `sent` (it was never counted there)", async () => {
    const day = utcDay(Date.now());
    const before = await sent(day, 'flash_call');
    const r = await call('POST', '/v1/verify', { phone_number: '+447700900555', expiry_seconds: 60 });
    expect(r.status).toBe(201);
    expect(await sent(day, 'flash_call')).toBe(before);
    const clock = Date.now() + 61_000;
    await new ExpirySweeper(redis, keys, { intervalMs: 50, eventsMaxLen: 1000, batch: 10 }, logger, () => clock).sweep();
    expect(await redis.hget(keys.verification(String(r.body.request_id)), 'status')).toBe('expired');
    expect(await sent(day, 'flash_call')).toBe(before);
  });
});
