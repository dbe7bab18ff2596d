import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import { http, readEvents, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { DEFAULT_SETTINGS } from '../../smsc-test/protocol.js';
import { smscEntry, startSmsc, type SmscSettings, type SubmitRecord, type TestSmsc } from '../helpers/smsc.js';

/**
 * SMS OTP end to end (issue 4): HTTP API → BullMQ → SMS worker → SMPP bind →
 * the test SMSC process (smsc-test/server.ts, a real SMPP peer over loopback)
 * → delivery receipt → status, events and a signed webhook. Each misbehaviour
 * of the SMSC must end with every message delivered once or failed with a
 * reason: none lost, none sent twice where the SMSC acknowledged it.
 */

type TestOverrides = Parameters<typeof testConfig>[0];

let smsc: TestSmsc;
let engine: TestEngine | undefined;
let hooks: { server: Server; url: string; received: Record<string, unknown>[] };

beforeAll(async () => {
  smsc = await startSmsc({ maxLifetimeMs: 170_000 });
  const received: Record<string, unknown>[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push(JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>);
      res.writeHead(200).end('ok');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  hooks = { server, received, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook` };
});

afterAll(async () => {
  await smsc?.stop();
  await new Promise((r) => hooks?.server.close(r));
});

afterEach(async () => {
  await engine?.stop();
  engine = undefined;
  await smsc.reset();
  await smsc.set({ ...DEFAULT_SETTINGS });
});

async function start(smscOverrides: Record<string, unknown> = {}, extra: TestOverrides = {}): Promise<TestEngine> {
  engine = await startTestEngine(
    testConfig({
      api: { defaultRateLimitPerSecond: 1000 },
      webhooks: { allowPrivate: true, attempts: 3, backoffMs: 100, orderPollMs: 50 },
      ...extra,
      sms: {
        enabled: true,
        smscs: [smscEntry(smsc, smscOverrides)],
        retry: { firstDelayMs: 100, maxDelayMs: 400, maxAttempts: 6 },
        ...(extra?.sms ?? {}),
      },
    } as TestOverrides),
  );
  await waitFor(async () => (await smsc.state()).sessions.some((s) => s.bound && s.closedAt === null), 5000);
  return engine;
}

async function sendSms(t: TestEngine, auth: string, phone: string, body: Record<string, unknown> = {}): Promise<string> {
  const res = await http(`${t.url}/v1/verify`, { auth, body: { phone_number: phone, method: 'sms', code_length: 6, ...body } });
  expect(res.status, JSON.stringify(res.body)).toBe(201);
  return (res.body as { request_id: string }).request_id;
}

async function finalStatus(t: TestEngine, auth: string, id: string, timeoutMs = 10_000): Promise<Record<string, unknown>> {
  return waitFor(async () => {
    const res = await http(`${t.url}/v1/verify/${id}`, { auth });
    const body = res.body as Record<string, unknown>;
    return body.status === 'delivered' || body.status === 'failed' || body.status === 'verified' ? body : undefined;
  }, timeoutMs);
}

const submitsTo = async (phone: string): Promise<SubmitRecord[]> =>
  (await smsc.state()).submits.filter((s) => s.destination === phone.replace('+', ''));
const accepted = (subs: SubmitRecord[]): SubmitRecord[] => subs.filter((s) => s.status === 0);
const codeIn = (text: string): string => /(\d{6})\s*$/.exec(text)?.[1] ?? '';

describe('SMS OTP through SMPP', () => {
  it('delivers the code as GSM-7 text, turns DELIVRD into delivered, verifies, and sends the signed webhook', async () => {
    const t = await start();
    const account = await t.account({ balance: 1 });
    await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(account.account_id, hooks.url);
    const id = await sendSms(t, account.auth, '+447700900123');

    const status = await finalStatus(t, account.auth, id);
    expect(status.status).toBe('delivered');
    const [submit, ...more] = await submitsTo('+447700900123');
    expect(more).toEqual([]);
    expect(submit).toMatchObject({ source: 'FlashVerify', destTon: 1, destNpi: 1, dataCoding: 0, registeredDelivery: 1 });
    expect(submit!.text).toMatch(/^Your FlashVerify code is: \d{6}$/);

    const wrong = await http(`${t.url}/v1/verify/check`, { auth: account.auth, body: { request_id: id, code: '000000' === codeIn(submit!.text) ? '111111' : '000000' } });
    expect(wrong.status).toBe(400);
    const ok = await http(`${t.url}/v1/verify/check`, { auth: account.auth, body: { request_id: id, code: codeIn(submit!.text) } });
    expect(ok.status).toBe(200);
    expect(ok.body).toMatchObject({ status: 'verified' });

    const events = (await readEvents(t.redis, t.keys)).filter((e) => e.request_id === id);
    const delivered = events.find((e) => e.status === 'delivered');
    expect(JSON.parse(delivered!.detail!)).toMatchObject({ smsc: 'default', stat: 'DELIVRD', smpp_message_id: submit!.messageId });
    const hook = await waitFor(async () => hooks.received.find((h) => h.request_id === id && h.status === 'delivered'), 5000);
    expect(hook).toMatchObject({ event: 'verification.delivered', method: 'sms', phone_number: '+447700900123' });

    const ready = await http(`${t.url}/readyz`);
    expect(ready.body).toMatchObject({ status: 'ready', checks: { smpp: true } });
    const metrics = await fetch(`${t.url}/metrics`).then((r) => r.text());
    expect(metrics).toMatch(/flashverify_sms_submits_total\{smsc="default",outcome="accepted"\} 1/);
    expect(metrics).toMatch(/flashverify_sms_receipts_total\{smsc="default",state="DELIVRD"\} 1/);
    expect(metrics).toMatch(/flashverify_smpp_binds_up\{smsc="default"\} 1/);
  });

  it('uses UCS-2 for a template outside GSM-7, the account template for the locale, and the per-country sender', async () => {
    const t = await start({}, { sms: { senders: { byCountry: { US: { addr: '+12025550100', ton: 1, npi: 1 } } } } });
    const account = await t.account({ balance: 1 });
    await t.accounts.setSmsTemplate(account.account_id, 'ru', 'Ваш код: {code}');
    const ru = await sendSms(t, account.auth, '+447700900124', { locale: 'ru' });
    const es = await sendSms(t, account.auth, '+34600000001');
    const us = await sendSms(t, account.auth, '+12025550123');
    for (const id of [ru, es, us]) expect(await finalStatus(t, account.auth, id)).toMatchObject({ status: 'delivered' });

    const [ruSubmit] = await submitsTo('+447700900124');
    expect([ruSubmit!.dataCoding, ruSubmit!.text.replace(/\d{6}$/, 'N')]).toEqual([8, 'Ваш код: N']);
    const [esSubmit] = await submitsTo('+34600000001');
    // "código" has an ó, which GSM 03.38 lacks: UCS-2, never a silent replacement.
    expect([esSubmit!.dataCoding, esSubmit!.text.replace(/\d{6}$/, 'N')]).toEqual([8, 'Su código FlashVerify es: N']);
    const [usSubmit] = await submitsTo('+12025550123');
    expect(usSubmit).toMatchObject({ source: '12025550100', dataCoding: 0 });
  });

  it('maps UNDELIV, REJECTD, EXPIRED and an unknown stat to failed with the reason, billed', async () => {
    const t = await start();
    const account = await t.account({ balance: 1 });
    const cases: [string, string][] = [
      ['+447700900091', 'sms_undeliverable'],
      ['+447700900092', 'sms_rejected'],
      ['+447700900093', 'sms_expired'],
    ];
    const ids = await Promise.all(cases.map(([phone]) => sendSms(t, account.auth, phone)));
    for (const [i, [, reason]] of cases.entries()) {
      const status = await finalStatus(t, account.auth, ids[i]!);
      expect([status.status, status.failure_reason]).toEqual(['failed', reason]);
    }
    await smsc.set({ finalState: 'XYZ' });
    const unknown = await sendSms(t, account.auth, '+447700900094');
    const status = await finalStatus(t, account.auth, unknown);
    expect([status.status, status.failure_reason]).toEqual(['failed', 'sms_unknown']);
    // Sent is sent: a negative receipt is not refunded (4 × 0.03).
    expect((await t.accounts.get(account.account_id)).balance).toBeCloseTo(1 - 4 * 0.03, 6);
  });

  it('a permanent SMPP error fails the verification with the SMPP status, refunded', async () => {
    const t = await start();
    const account = await t.account({ balance: 1 });
    await smsc.set({ rejectPrefixes: { '4477009008': 0x0b } });
    const id = await sendSms(t, account.auth, '+447700900801');
    const status = await finalStatus(t, account.auth, id);
    expect([status.status, status.failure_reason]).toEqual(['failed', 'smsc_rejected']);
    const failed = (await readEvents(t.redis, t.keys)).find((e) => e.request_id === id && e.status === 'failed');
    expect(JSON.parse(failed!.detail!)).toMatchObject({ smpp_status: 0x0b, smpp_status_name: 'ESME_RINVDSTADR' });
    expect((await t.accounts.get(account.account_id)).balance).toBe(1);
    expect(await submitsTo('+447700900801')).toHaveLength(1);
  });

  it('throttled and queue-full answers are retried later through BullMQ: delivered once', async () => {
    const t = await start();
    const account = await t.account({ balance: 1 });
    await smsc.set({ throttleNext: 2 });
    const throttled = await sendSms(t, account.auth, '+447700900201');
    expect(await finalStatus(t, account.auth, throttled)).toMatchObject({ status: 'delivered' });
    const subs = await submitsTo('+447700900201');
    expect(subs.map((s) => s.status)).toEqual([0x58, 0x58, 0]);

    await smsc.set({ queueFullNext: 1 });
    const full = await sendSms(t, account.auth, '+447700900202');
    expect(await finalStatus(t, account.auth, full)).toMatchObject({ status: 'delivered' });
    expect((await submitsTo('+447700900202')).map((s) => s.status)).toEqual([0x14, 0]);
    const record = await t.redis.hgetall(t.keys.verification(full));
    expect(record.sms_attempts).toBe('2');
  });

  it('gives up after sms.retry.maxAttempts throttled answers: failed smsc_throttled, refunded', async () => {
    const t = await start({}, { sms: { retry: { firstDelayMs: 50, maxDelayMs: 100, maxAttempts: 3 } } });
    const account = await t.account({ balance: 1 });
    await smsc.set({ throttleNext: 10 });
    const id = await sendSms(t, account.auth, '+447700900203');
    const status = await finalStatus(t, account.auth, id);
    expect([status.status, status.failure_reason]).toEqual(['failed', 'smsc_throttled']);
    // One submit per attempt at most (a bind cooling down after a throttle answers for the SMSC without sending).
    const subs = await submitsTo('+447700900203');
    expect(subs.length).toBeGreaterThanOrEqual(1);
    expect(subs.length).toBeLessThanOrEqual(3);
    expect(accepted(subs)).toEqual([]);
    expect(await t.redis.hget(t.keys.verification(id), 'sms_attempts')).toBe('3');
    expect((await t.accounts.get(account.account_id)).balance).toBe(1);
  });

  it('a connection dropped with submits in flight: every message delivered exactly once after the reconnect, one webhook each', async () => {
    const t = await start({ window: 10 });
    const account = await t.account({ balance: 1 });
    await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(account.account_id, hooks.url);
    await smsc.set({ dropAfter: 3 });
    const phones = Array.from({ length: 6 }, (_, i) => `+4477009003${String(i).padStart(2, '0')}`);
    const ids = await Promise.all(phones.map((p) => sendSms(t, account.auth, p)));
    for (const id of ids) expect(await finalStatus(t, account.auth, id, 15_000)).toMatchObject({ status: 'delivered' });
    const state = await smsc.state();
    expect(state.sessions.some((s) => s.closedBy === 'server')).toBe(true);
    for (const phone of phones) expect(accepted(await submitsTo(phone)), JSON.stringify([await submitsTo(phone), state.sessions, state.events])).toHaveLength(1);
    // Each customer hears it once: one signed `verification.delivered` webhook per request.
    await waitFor(async () => ids.every((id) => hooks.received.some((h) => h.request_id === id && h.status === 'delivered')) || undefined, 10_000);
    for (const id of ids) expect(hooks.received.filter((h) => h.request_id === id && h.status === 'delivered')).toHaveLength(1);
  });

  it.each<[string, Partial<SmscSettings>, Record<string, unknown>]>([
    ['delayed responses (inside the response timeout)', { respDelayMs: 300 }, { responseTimeoutMs: 1500 }],
    ['receipts before responses', { receiptBeforeResp: true }, {}],
    ['hex ids in responses, decimal in receipts', { idFormat: 'hex_resp_decimal_dlr' }, { messageIdFormat: 'hex_resp_decimal_dlr' }],
    ['hex ids on both sides', { idFormat: 'hex' }, { messageIdFormat: 'hex' }],
    ['receipts in TLVs only', { receiptMode: 'tlv' }, {}],
    ['receipts in text only', { receiptMode: 'text' }, {}],
  ])('%s: still matched and delivered once', async (_name, settings, smscConfig) => {
    const t = await start(smscConfig);
    await smsc.set(settings);
    const account = await t.account({ balance: 1 });
    const phones = ['+447700900401', '+447700900402', '+447700900403'];
    const ids = await Promise.all(phones.map((p) => sendSms(t, account.auth, p)));
    for (const id of ids) expect(await finalStatus(t, account.auth, id)).toMatchObject({ status: 'delivered' });
    for (const phone of phones) expect(accepted(await submitsTo(phone))).toHaveLength(1);
  });

  it('a response later than the response timeout: recorded as accepted, never sent twice', async () => {
    const t = await start({ responseTimeoutMs: 500 }, { sms: { retry: { firstDelayMs: 100, maxDelayMs: 400, maxAttempts: 6 } } });
    const account = await t.account({ balance: 1 });
    await smsc.set({ respDelayMs: 900 });
    const id = await sendSms(t, account.auth, '+447700900701');
    expect(await finalStatus(t, account.auth, id)).toMatchObject({ status: 'delivered' });
    // Give a wrongly scheduled retry time to show up.
    await new Promise((r) => setTimeout(r, 800));
    const subs = await submitsTo('+447700900701');
    expect(subs.map((s) => s.status)).toEqual([0]);
    expect(await t.redis.hget(t.keys.verification(id), 'sms_state')).toBe('accepted');
    expect(t.logs.some((l) => l.includes('after its response timeout'))).toBe(true);
  });

  it('resend: true sends the same code again on the same request, billed per send', async () => {
    const t = await start();
    const account = await t.account({ balance: 1 });
    const id = await sendSms(t, account.auth, '+447700900601');
    expect(await finalStatus(t, account.auth, id)).toMatchObject({ status: 'delivered' });
    const again = await http(`${t.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900601', method: 'sms', code_length: 6, resend: true } });
    expect([again.status, (again.body as { request_id: string }).request_id]).toEqual([200, id]);
    await waitFor(async () => accepted(await submitsTo('+447700900601')).length === 2 || undefined, 10_000);
    const [first, second] = accepted(await submitsTo('+447700900601'));
    expect(codeIn(second!.text)).toBe(codeIn(first!.text));
    const ok = await http(`${t.url}/v1/verify/check`, { auth: account.auth, body: { request_id: id, code: codeIn(second!.text) } });
    expect(ok.body).toMatchObject({ status: 'verified' });
    expect((await t.accounts.get(account.account_id)).balance).toBeCloseTo(1 - 2 * 0.03, 6);
  });

  it('SMSC down when the request comes: the job waits and delivers once the bind is up', async () => {
    const t = await start();
    const account = await t.account({ balance: 1 });
    await smsc.set({ refuseBinds: true });
    await smsc.action('drop');
    await waitFor(async () => (await http(`${t.url}/readyz`)).status === 503, 5000);
    const id = await sendSms(t, account.auth, '+447700900501');
    await waitFor(async () => (await t.redis.hget(t.keys.verification(id), 'sms_state')) === 'retry', 5000);
    await smsc.set({ refuseBinds: false });
    expect(await finalStatus(t, account.auth, id, 15_000)).toMatchObject({ status: 'delivered' });
    expect(accepted(await submitsTo('+447700900501'))).toHaveLength(1);
  });
});
