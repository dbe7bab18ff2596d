import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import { http, readEvents, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { DEFAULT_SETTINGS } from '../../smsc-test/protocol.js';
import { smscEntry, startSmsc, type SmscSettings, type SubmitRecord, type TestSmsc } from '../helpers/smsc.js';
import { Receiver } from '../helpers/webhook-receiver.js';

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
const hooks = new Receiver();
let hookUrl: string;
/** The bodies of the webhooks received for a request, in order. */
const hooksOf = (id: string) => hooks.forRequest(id).map((r) => r.json);

beforeAll(async () => {
  smsc = await startSmsc({ maxLifetimeMs: 170_000 });
  hookUrl = await hooks.start();
});

afterAll(async () => {
  await smsc?.stop();
  await hooks.stop();
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
        unconfirmedDeadlineMs: 3_000,
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
    await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(account.account_id, hookUrl);
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
    const hook = await waitFor(async () => hooksOf(id).find((h) => h.status === 'delivered'), 5000);
    expect(hook).toMatchObject({ event: 'verification.delivered', method: 'sms', phone_number: '+447700900123' });

    const ready = await http(`${t.url}/readyz`);
    expect(ready.body).toMatchObject({ status: 'ready', checks: { smpp: true } });
    const metrics = await fetch(`${t.url}/metrics`).then((r) => r.text());
    expect(metrics).toMatch(/flashverify_sms_submits_total\{smsc="default",outcome="accepted"\} 1/);
    expect(metrics).toMatch(/flashverify_sms_receipts_total\{smsc="default",state="DELIVRD"\} 1/);
    expect(metrics).toMatch(/flashverify_smpp_binds_up\{smsc="default"\} 1/);
  });

  it('uses UCS-2 for a template outside GSM-7, the account template for the locale, and the per-country sender', async () => {
    const t = await start({}, {
      sms: { senders: { byCountry: { US: { addr: '+12025550100', ton: 1, npi: 1 } } } },
      verification: { languageByCountry: true },
    } as TestOverrides);
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

  it('without a locale the text is the contract\'s English one whatever the country (verification.languageByCountry off by default)', async () => {
    const t = await start();
    const account = await t.account({ balance: 1 });
    const es = await sendSms(t, account.auth, '+34600000002');
    const fr = await sendSms(t, account.auth, '+33612345679', { locale: 'fr' });
    for (const id of [es, fr]) expect(await finalStatus(t, account.auth, id)).toMatchObject({ status: 'delivered' });
    const [esSubmit] = await submitsTo('+34600000002');
    expect([esSubmit!.dataCoding, esSubmit!.text.replace(/\d{6}$/, 'N')]).toEqual([0, 'Your FlashVerify code is: N']);
    const [frSubmit] = await submitsTo('+33612345679');
    expect(frSubmit!.text.replace(/\d{6}$/, 'N')).toBe('Votre code FlashVerify est : N');
  });

  it('transmitter_receiver with the receiver bind refused: submits can go, but no receipt can come: flashverify_smpp_receivers_up 0, /readyz not ready until it binds', async () => {
    await smsc.set({ refuseBindTypes: ['receiver'] });
    const t = await start({ bindMode: 'transmitter_receiver' });
    const scrape = async (): Promise<string> => fetch(`${t.url}/metrics`).then((r) => r.text());
    await waitFor(async () => (/flashverify_smpp_binds_up\{smsc="default"\} 1/.test(await scrape()) ? true : undefined), 5000);
    expect(await scrape()).toMatch(/flashverify_smpp_receivers_up\{smsc="default"\} 0/);
    const down = await http(`${t.url}/readyz`);
    expect([down.status, (down.body as { checks: Record<string, boolean> }).checks.smpp]).toEqual([503, false]);
    await smsc.set({ refuseBindTypes: [] });
    await waitFor(async () => ((await http(`${t.url}/readyz`)).status === 200 ? true : undefined), 15_000);
    expect(await scrape()).toMatch(/flashverify_smpp_receivers_up\{smsc="default"\} 1/);
  });

  it('an account template changed by another process is used within accounts.fieldCacheMs; one changed in this process at once', async () => {
    const t = await start({}, { accounts: { fieldCacheMs: 3_000 } } as TestOverrides);
    const account = await t.account({ balance: 1 });
    const textTo = async (phone: string): Promise<string> => {
      expect(await finalStatus(t, account.auth, await sendSms(t, account.auth, phone))).toMatchObject({ status: 'delivered' });
      return (await submitsTo(phone))[0]!.text.replace(/\d{6}$/, 'N');
    };
    await t.accounts.setSmsTemplate(account.account_id, 'en', 'First {code}');
    expect(await textTo('+447700900131')).toBe('First N');
    // Another api process changes it (its own cache is not this one): HSET straight into Redis.
    await t.redis.hset(t.keys.account(account.account_id), 'sms_tpl:en', 'Second {code}');
    const changedAt = Date.now();
    const stale = await textTo('+447700900132');
    if (Date.now() - changedAt < 2_500) expect(stale).toBe('First N');
    await new Promise((r) => setTimeout(r, Math.max(0, changedAt + 3_100 - Date.now())));
    expect(await textTo('+447700900133')).toBe('Second N');
    // Changed through this process's AccountStore: its worker sees it at once.
    await t.accounts.setSmsTemplate(account.account_id, 'en', 'Third {code}');
    expect(await textTo('+447700900134')).toBe('Third N');
  });

  it('maps UNDELIV, REJECTD, EXPIRED to failed with the reason, billed; a stat it does not know fails nothing', async () => {
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
    // A stat this engine does not know (here "XYZ") is pending, not a failure: the code may well have reached the
    // phone, and it still verifies.
    await smsc.set({ finalState: 'XYZ' });
    const unknown = await sendSms(t, account.auth, '+447700900094');
    await waitFor(async () => (await smsc.state()).receipts.find((r) => r.destination === '447700900094' && r.done) ?? undefined, 10_000);
    await new Promise((r) => setTimeout(r, 300));
    expect((await http(`${t.url}/v1/verify/${unknown}`, { auth: account.auth })).body.status).toBe('sent');
    const [sub] = accepted(await submitsTo('+447700900094'));
    const ok = await http(`${t.url}/v1/verify/check`, { auth: account.auth, body: { request_id: unknown, code: codeIn(sub!.text) } });
    expect(ok.body).toMatchObject({ status: 'verified' });
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
    // Refused: no longer in flight to the number (a receipt for another submit to it is matched as before).
    expect(await t.redis.keys(t.keys.smsInFlight('*'))).toEqual([]);
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

  it('a connection dropped with submits in flight: nothing resent; unanswered ones fail smsc_unconfirmed at the deadline, not refunded', async () => {
    const t = await start({ window: 10 }, { sms: { unconfirmedDeadlineMs: 1_500 } });
    const account = await t.account({ balance: 1 });
    await smsc.set({ dropAfter: 3 });
    const phones = Array.from({ length: 6 }, (_, i) => `+4477009003${String(i).padStart(2, '0')}`);
    const ids = await Promise.all(phones.map((p) => sendSms(t, account.auth, p)));
    const statuses = [];
    for (const id of ids) statuses.push(await finalStatus(t, account.auth, id, 15_000));
    const state = await smsc.state();
    expect(state.sessions.some((s) => s.closedBy === 'server')).toBe(true);
    for (const [i, phone] of phones.entries()) {
      // Every submit the SMSC received counts, answered or not: never two for one attempt.
      const subs = await submitsTo(phone);
      expect(subs.length, JSON.stringify(subs)).toBeLessThanOrEqual(1);
      if (subs[0]?.status === 0) expect(statuses[i]).toMatchObject({ status: 'delivered' });
      else expect([statuses[i]!.status, statuses[i]!.failure_reason]).toEqual(['failed', 'smsc_unconfirmed']);
    }
    // The drop held 3 submits without an answer: those ended unconfirmed.
    expect(statuses.filter((s) => s.failure_reason === 'smsc_unconfirmed').length).toBeGreaterThanOrEqual(3);
    // Unconfirmed may have been sent: billed, never refunded.
    expect((await t.accounts.get(account.account_id)).balance).toBeCloseTo(1 - 6 * 0.03, 6);
  });

  it('an SMSC that accepts then drops before answering: never a second message, each delivered by its receipt (matched by number), one webhook each', async () => {
    const t = await start({ window: 10 });
    const account = await t.account({ balance: 1 });
    await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(account.account_id, hookUrl);
    // Receipts come on the new bind after the reconnect, well after the worker marked the submits unconfirmed.
    await smsc.set({ acceptThenDrop: 3, receiptDelayMs: 300 });
    // Three in flight on the one bind: the SMSC stores all three, then drops the connection before answering any.
    const phones = Array.from({ length: 3 }, (_, i) => `+4477009009${String(i).padStart(2, '0')}`);
    const ids = await Promise.all(phones.map((p) => sendSms(t, account.auth, p)));
    for (const id of ids) expect(await finalStatus(t, account.auth, id, 15_000)).toMatchObject({ status: 'delivered' });
    expect(t.logs.filter((l) => l.includes('receipt matched an unconfirmed submit by number') || l.includes('its receipt had already come'))).toHaveLength(3);
    const state = await smsc.state();
    expect(state.events.filter((e) => e.type === 'drop' && e.reason === 'accept_then_drop').length).toBeGreaterThanOrEqual(1);
    for (const phone of phones) {
      const subs = await submitsTo(phone);
      expect(subs, JSON.stringify([subs, state.events])).toHaveLength(1);
      expect(subs[0]!.status).toBe(0);
    }
    const events = (await readEvents(t.redis, t.keys)).filter((e) => ids.includes(e.request_id!));
    expect(events.filter((e) => e.status === 'failed')).toEqual([]);
    await waitFor(async () => ids.every((id) => hooksOf(id).some((h) => h.status === 'delivered')) || undefined, 10_000);
    for (const id of ids) expect(hooksOf(id).filter((h) => h.status !== 'sent')).toHaveLength(1);
  });

  it('two unconfirmed submits to one number on one SMSC (two accounts): a receipt is not guessed by number; both fail smsc_unconfirmed, a warning names them, never the number', async () => {
    const t = await start({ window: 10 }, { sms: { unconfirmedDeadlineMs: 2_500 } });
    const accounts = [await t.account({ balance: 1 }), await t.account({ balance: 1 })];
    // Both stored by the SMSC and never answered; their receipts come on the new bind.
    await smsc.set({ acceptThenDrop: 2, receiptDelayMs: 300 });
    const phone = '+447700900981';
    const ids = [await sendSms(t, accounts[0]!.auth, phone), await sendSms(t, accounts[1]!.auth, phone)];
    for (const [i, id] of ids.entries()) {
      const status = await finalStatus(t, accounts[i]!.auth, id, 15_000);
      expect([status.status, status.failure_reason]).toEqual(['failed', 'smsc_unconfirmed']);
    }
    expect(accepted(await submitsTo(phone))).toHaveLength(2);
    const events = (await readEvents(t.redis, t.keys)).filter((e) => ids.includes(e.request_id!));
    expect(events.filter((e) => e.status === 'delivered')).toEqual([]);
    const warnings = t.logs.filter((l) => l.includes('several unconfirmed submits to its number'));
    expect(warnings.length).toBeGreaterThanOrEqual(1);
    for (const w of warnings) expect([w.includes(ids[0]!), w.includes(ids[1]!), w.includes(phone.slice(1))]).toEqual([true, true, false]);
    expect(t.logs.filter((l) => l.includes(phone.slice(1)))).toEqual([]);
  });

  it('two submits to one number time out after their receipts came: not guessed by number; each late submit_sm_resp maps its own receipt', async () => {
    const t = await start({ responseTimeoutMs: 500 }, { sms: { unconfirmedDeadlineMs: 10_000 } });
    const accounts = [await t.account({ balance: 1 }), await t.account({ balance: 1 })];
    // Receipts at once, submit_sm_resp 950 ms later: both receipts are parked by number before either submit is unconfirmed.
    await smsc.set({ receiptBeforeResp: true, respDelayMs: 900 });
    const phone = '+447700900982';
    const ids = [await sendSms(t, accounts[0]!.auth, phone), await sendSms(t, accounts[1]!.auth, phone)];
    for (const [i, id] of ids.entries()) expect(await finalStatus(t, accounts[i]!.auth, id)).toMatchObject({ status: 'delivered' });
    const subs = accepted(await submitsTo(phone));
    expect(subs).toHaveLength(2);
    expect(t.logs.filter((l) => l.includes('sms accepted by the SMSC after its response timeout'))).toHaveLength(2);
    for (const [i, id] of ids.entries()) {
      // Delivered by the receipt of the message that carried this request's own code.
      const delivered = (await readEvents(t.redis, t.keys)).find((e) => e.request_id === id && e.status === 'delivered');
      const mine = subs.find((s) => s.messageId === JSON.parse(delivered!.detail!).smpp_message_id);
      const ok = await http(`${t.url}/v1/verify/check`, { auth: accounts[i]!.auth, body: { request_id: id, code: codeIn(mine!.text) } });
      expect(ok.body).toMatchObject({ status: 'verified' });
    }
  });

  it('a receipt that comes before its submit_sm_resp while another submit to the number waits unconfirmed: not matched to that one by number; each settled as its own', async () => {
    const t = await start({ responseTimeoutMs: 500 }, { sms: { unconfirmedDeadlineMs: 4_000 } });
    const accounts = [await t.account({ balance: 1 }), await t.account({ balance: 1 })];
    const phone = '+447700900983';
    // B: never answered, never receipted; it waits unconfirmed for its deadline.
    await smsc.set({ noResponse: 'submit' });
    const b = await sendSms(t, accounts[0]!.auth, phone);
    await waitFor(async () => ((await t.redis.hget(t.keys.verification(b), 'sms_state')) === 'unconfirmed' ? true : undefined), 5000);
    // A: answered, its receipt sent before its submit_sm_resp.
    await smsc.set({ noResponse: 'off', receiptBeforeResp: true });
    const a = await sendSms(t, accounts[1]!.auth, phone);
    expect(await finalStatus(t, accounts[1]!.auth, a)).toMatchObject({ status: 'delivered' });
    const [, mine] = await submitsTo(phone);
    expect(mine!.status).toBe(0);
    const aDelivered = (await readEvents(t.redis, t.keys)).find((e) => e.request_id === a && e.status === 'delivered');
    expect(JSON.parse(aDelivered!.detail!).smpp_message_id).toBe(mine!.messageId);
    // B was never confirmed: it fails at its deadline (not delivered by A's receipt).
    expect(await finalStatus(t, accounts[0]!.auth, b, 10_000)).toMatchObject({ status: 'failed', failure_reason: 'smsc_unconfirmed' });
    expect((await readEvents(t.redis, t.keys)).filter((e) => e.request_id === b && e.status === 'delivered')).toEqual([]);
    expect(t.logs.some((l) => l.includes('receipt while another submit to its number is in flight'))).toBe(true);
    const ok = await http(`${t.url}/v1/verify/check`, { auth: accounts[1]!.auth, body: { request_id: a, code: codeIn(mine!.text) } });
    expect(ok.body).toMatchObject({ status: 'verified' });
    // Nothing left in flight to the number.
    expect(await t.redis.keys(t.keys.smsInFlight('*'))).toEqual([]);
  });

  it('an unconfirmed submit whose receipt comes after the deadline: failed smsc_unconfirmed, not refunded, never also delivered', async () => {
    const t = await start({}, { sms: { unconfirmedDeadlineMs: 800 } });
    const account = await t.account({ balance: 1 });
    await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(account.account_id, hookUrl);
    await smsc.set({ acceptThenDrop: 1, receiptDelayMs: 2_000 });
    const id = await sendSms(t, account.auth, '+447700900951');
    const status = await finalStatus(t, account.auth, id);
    expect([status.status, status.failure_reason]).toEqual(['failed', 'smsc_unconfirmed']);
    // The DELIVRD comes later and is answered (nothing for the SMSC to retry), yet changes nothing.
    await smsc.waitFor((s) => s.receipts.find((r) => r.destination === '447700900951' && r.statuses.includes(0)), 10_000, 'the late receipt answered');
    const events = (await readEvents(t.redis, t.keys)).filter((e) => e.request_id === id && e.status !== 'sent');
    expect(events.map((e) => e.status)).toEqual(['failed']);
    expect(JSON.parse(events[0]!.detail!)).toMatchObject({ reason: 'smsc_unconfirmed', smsc: 'default' });
    expect((await http(`${t.url}/v1/verify/${id}`, { auth: account.auth })).body).toMatchObject({ status: 'failed', failure_reason: 'smsc_unconfirmed' });
    expect((await t.accounts.get(account.account_id)).balance).toBeCloseTo(1 - 0.03, 6);
    expect(await submitsTo('+447700900951')).toHaveLength(1);
    await waitFor(async () => hooksOf(id)[0], 5_000);
    expect(hooksOf(id).filter((h) => h.status !== 'sent').map((h) => h.status)).toEqual(['failed']);
  });

  it('intermediate receipts (ACCEPTD, ENROUTE) change nothing; the DELIVRD after them: delivered through the API and one webhook', async () => {
    const t = await start();
    const account = await t.account({ balance: 1 });
    await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(account.account_id, hookUrl);
    await smsc.set({ intermediateStates: ['ACCEPTD', 'ENROUTE'], receiptDelayMs: 1_000 });
    const id = await sendSms(t, account.auth, '+447700900961');
    const answered = (state: string) => (s: { receipts: { destination: string; state: string; statuses: (number | null)[] }[] }) =>
      s.receipts.find((r) => r.destination === '447700900961' && r.state === state && r.statuses.includes(0));
    await smsc.waitFor(answered('ENROUTE'), 5_000, 'ENROUTE answered');
    // Read before the SMSC has even sent the DELIVRD (1 s later): still `sent`.
    const during = (await http(`${t.url}/v1/verify/${id}`, { auth: account.auth })).body as Record<string, unknown>;
    const finalReceipt = (await smsc.state()).receipts.find((r) => r.destination === '447700900961' && r.state === 'DELIVRD');
    expect(finalReceipt?.statuses).toEqual([]);
    expect(during.status).toBe('sent');
    expect(await finalStatus(t, account.auth, id)).toMatchObject({ status: 'delivered' });
    const events = (await readEvents(t.redis, t.keys)).filter((e) => e.request_id === id && e.status !== 'sent');
    expect(events.map((e) => [e.status, JSON.parse(e.detail!).stat])).toEqual([['delivered', 'DELIVRD']]);
    await waitFor(async () => hooksOf(id)[0], 5_000);
    await new Promise((r) => setTimeout(r, 200));
    expect(hooksOf(id).filter((h) => h.status !== 'sent').map((h) => h.event)).toEqual(['verification.delivered']);
    const metrics = await fetch(`${t.url}/metrics`).then((r) => r.text());
    expect(metrics).toMatch(/flashverify_sms_receipts_total\{smsc="default",state="ENROUTE"\} 1/);
  });

  it.each<[string, Partial<SmscSettings>, Record<string, unknown>]>([
    ['delayed responses (inside the response timeout)', { respDelayMs: 300 }, { responseTimeoutMs: 1500 }],
    ['receipts before responses', { receiptBeforeResp: true }, {}],
    ['hex ids in responses, decimal in receipts', { idFormat: 'hex_resp_decimal_dlr' }, { messageIdFormat: 'hex_resp_decimal_dlr' }],
    ['hex ids on both sides', { idFormat: 'hex' }, { messageIdFormat: 'hex' }],
    ['receipts in TLVs only', { receiptMode: 'tlv' }, {}],
    ['receipts in text only', { receiptMode: 'text' }, {}],
    ['receipts as data_sm (TLVs, text in message_payload)', { receiptPdu: 'data_sm' }, {}],
    ['receipts as data_sm with TLVs only', { receiptPdu: 'data_sm', receiptMode: 'tlv' }, {}],
  ])('%s: still matched and delivered once', async (_name, settings, smscConfig) => {
    const t = await start(smscConfig);
    await smsc.set(settings);
    const account = await t.account({ balance: 1 });
    const phones = ['+447700900401', '+447700900402', '+447700900403'];
    const ids = await Promise.all(phones.map((p) => sendSms(t, account.auth, p)));
    for (const id of ids) expect(await finalStatus(t, account.auth, id)).toMatchObject({ status: 'delivered' });
    for (const phone of phones) expect(accepted(await submitsTo(phone))).toHaveLength(1);
    // The event carries its account (taken from the message-id map, whichever came first: receipt or response).
    const delivered = (await readEvents(t.redis, t.keys)).filter((e) => ids.includes(e.request_id!) && e.status === 'delivered');
    expect(delivered.map((e) => [e.account_id, e.method]).sort()).toEqual(ids.map(() => [account.account_id, 'sms']));
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

  it('a permanent error after the response timeout fails the verification at once with the SMPP status, refunded; its number no longer waits for a receipt', async () => {
    // A deadline far past the test: only the late answer can end it.
    const t = await start({ responseTimeoutMs: 500 }, { sms: { unconfirmedDeadlineMs: 60_000 } });
    const account = await t.account({ balance: 1 });
    await smsc.set({ respDelayMs: 900, rejectPrefixes: { '447700900721': 0x0b }, receiptDelayMs: 300 });
    const phone = '+447700900721';
    const id = await sendSms(t, account.auth, phone);
    const status = await finalStatus(t, account.auth, id, 8_000);
    expect([status.status, status.failure_reason]).toEqual(['failed', 'smsc_rejected']);
    const failed = (await readEvents(t.redis, t.keys)).filter((e) => e.request_id === id && e.status === 'failed');
    expect(failed.map((e) => JSON.parse(e.detail!))).toEqual([
      { reason: 'smsc_rejected', smsc: 'default', smpp_status: 0x0b, smpp_status_name: 'ESME_RINVDSTADR', attempts: 1, refund: true },
    ]);
    expect((await t.accounts.get(account.account_id)).balance).toBe(1);
    expect(await submitsTo(phone)).toHaveLength(1);
    expect(t.logs.some((l) => l.includes(id) && l.includes('refused by the SMSC after its response timeout'))).toBe(true);
    // Another submit to the number, stored by the SMSC and never answered: the only one waiting, so its receipt
    // is matched by number to it (the refused one no longer waits).
    const other = await t.account({ balance: 1 });
    await smsc.set({ acceptThenDrop: 1 });
    const second = await sendSms(t, other.auth, phone);
    expect(await finalStatus(t, other.auth, second, 8_000)).toMatchObject({ status: 'delivered' });
    expect((await readEvents(t.redis, t.keys)).filter((e) => e.request_id === id).map((e) => e.status)).not.toContain('delivered');
  });

  it('a temporary error after the response timeout is retried as an in-time one (delivered once); with no attempt left: failed smsc_throttled, refunded', async () => {
    const t = await start({ responseTimeoutMs: 500 }, { sms: { unconfirmedDeadlineMs: 60_000, retry: { firstDelayMs: 100, maxDelayMs: 400, maxAttempts: 2 } } });
    const account = await t.account({ balance: 1 });
    await smsc.set({ respDelayMs: 900, throttleNext: 1 });
    const retried = await sendSms(t, account.auth, '+447700900722');
    await smsc.waitFor((s) => s.submits.some((x) => x.destination === '447700900722') || undefined, 5_000, 'the first submit');
    // The retry is answered in time.
    await smsc.set({ respDelayMs: 0 });
    expect(await finalStatus(t, account.auth, retried, 8_000)).toMatchObject({ status: 'delivered' });
    expect((await submitsTo('+447700900722')).map((s) => s.status)).toEqual([0x58, 0]);
    expect(await t.redis.hget(t.keys.verification(retried), 'sms_attempts')).toBe('2');

    await smsc.set({ respDelayMs: 900, throttleNext: 2 });
    const exhausted = await sendSms(t, account.auth, '+447700900723');
    const status = await finalStatus(t, account.auth, exhausted, 10_000);
    expect([status.status, status.failure_reason]).toEqual(['failed', 'smsc_throttled']);
    expect((await submitsTo('+447700900723')).map((s) => s.status)).toEqual([0x58, 0x58]);
    const failed = (await readEvents(t.redis, t.keys)).filter((e) => e.request_id === exhausted && e.status === 'failed');
    expect(failed.map((e) => JSON.parse(e.detail!))).toEqual([{ reason: 'smsc_throttled', attempts: 2, smsc: 'default', smpp_status: 0x58, refund: true }]);
    expect((await t.accounts.get(account.account_id)).balance).toBeCloseTo(1 - 0.03, 6);
  });

  it('an ESME_ROK without a message_id: waits as an unanswered submit does, and is delivered by its receipt matched by number (not under an empty id)', async () => {
    const t = await start({});
    const account = await t.account({ balance: 1 });
    await smsc.set({ emptyMessageId: true, receiptDelayMs: 200 });
    const id = await sendSms(t, account.auth, '+447700900712');
    expect(await finalStatus(t, account.auth, id, 10_000)).toMatchObject({ status: 'delivered' });
    expect(t.logs.filter((l) => l.includes('receipt matched an unconfirmed submit by number'))).toHaveLength(1);
    expect(await t.redis.keys(`${t.config.redis.prefix}:smsid:default:`)).toEqual([]);
    expect(await submitsTo('+447700900712')).toHaveLength(1);
  });

  it('no submit_sm_resp within the response timeout: not resent, failed smsc_unconfirmed at the deadline, not refunded', async () => {
    const t = await start({ responseTimeoutMs: 300 }, { sms: { unconfirmedDeadlineMs: 1_500 } });
    const account = await t.account({ balance: 1 });
    await smsc.set({ noResponse: 'submit' });
    const id = await sendSms(t, account.auth, '+447700900711');
    const status = await finalStatus(t, account.auth, id);
    expect([status.status, status.failure_reason]).toEqual(['failed', 'smsc_unconfirmed']);
    expect(await submitsTo('+447700900711')).toHaveLength(1);
    const failed = (await readEvents(t.redis, t.keys)).filter((e) => e.request_id === id && e.status === 'failed');
    expect(failed.map((e) => JSON.parse(e.detail!))).toEqual([{ reason: 'smsc_unconfirmed', smsc: 'default', attempts: 1 }]);
    // It may have been sent: billed.
    expect((await t.accounts.get(account.account_id)).balance).toBeCloseTo(1 - 0.03, 6);
  });

  it('an unconfirmed submit whose request expires before its deadline is not refunded (it may have been sent)', async () => {
    const t = await start({ responseTimeoutMs: 300 }, { sms: { unconfirmedDeadlineMs: 1_500 } });
    const account = await t.account({ balance: 1 });
    await smsc.set({ noResponse: 'submit' });
    const id = await sendSms(t, account.auth, '+447700900712');
    await waitFor(async () => (await t.redis.hget(t.keys.verification(id), 'sms_state')) === 'unconfirmed' || undefined, 5_000);
    // The request's lifetime ends before the unconfirmed deadline (as with a short expiry_seconds).
    await t.redis.hset(t.keys.verification(id), 'expires_at', String(Date.now() - 1));
    await waitFor(async () => t.logs.some((l) => l.includes(id) && l.includes('expired after its delivery started')) || undefined, 10_000);
    expect(await t.redis.hget(t.keys.verification(id), 'status')).toBe('expired');
    const failed = (await readEvents(t.redis, t.keys)).filter((e) => e.request_id === id && e.status === 'failed');
    expect(failed).toEqual([]);
    expect((await t.accounts.get(account.account_id)).balance).toBeCloseTo(1 - 0.03, 6);
    expect(await submitsTo('+447700900712')).toHaveLength(1);
  });

  it('an SMS waiting for a window slot when its request is canceled or expires is not sent, and is refunded', async () => {
    // One slot, held 2.5 s by the first submit: the next two wait in the gateway (marked `submitting`) meanwhile.
    const t = await start({ window: 1, responseTimeoutMs: 5_000 });
    const account = await t.account({ balance: 1 });
    await smsc.set({ respDelayMs: 2_500 });
    const first = await sendSms(t, account.auth, '+447700900721');
    await waitFor(async () => (await submitsTo('+447700900721')).length === 1 || undefined, 5_000);
    const canceled = await sendSms(t, account.auth, '+447700900722');
    const expired = await sendSms(t, account.auth, '+447700900723');
    for (const id of [canceled, expired]) await waitFor(async () => (await t.redis.hget(t.keys.verification(id), 'sms_state')) === 'submitting' || undefined, 5_000);
    expect((await http(`${t.url}/v1/verify/${canceled}/cancel`, { auth: account.auth, body: {} })).body).toMatchObject({ status: 'canceled' });
    // Its time is up while it waits (as with a short expiry_seconds).
    const now = Date.now() - 1;
    await t.redis.hset(t.keys.verification(expired), 'expires_at', String(now));
    await t.redis.zadd(t.keys.expiries(), now, expired);

    expect((await finalStatus(t, account.auth, first)).status).toBe('delivered');
    await waitFor(async () => t.logs.filter((l) => l.includes('while its SMS waited for its turn')).length === 2 || undefined, 10_000);
    await waitFor(async () => ((await http(`${t.url}/v1/verify/${expired}`, { auth: account.auth })).body as { status: string }).status === 'expired' || undefined, 10_000);
    // Neither left; each is refunded once: only the first SMS is billed.
    expect(await submitsTo('+447700900722')).toEqual([]);
    expect(await submitsTo('+447700900723')).toEqual([]);
    await waitFor(async () => Math.abs((await t.accounts.get(account.account_id)).balance - (1 - 0.03)) < 1e-9 || undefined, 5_000);
    expect([await t.redis.hget(t.keys.verification(canceled), 'cost'), await t.redis.hget(t.keys.verification(expired), 'cost')]).toEqual(['0', '0']);
    expect(((await http(`${t.url}/v1/verify/${canceled}`, { auth: account.auth })).body as { status: string }).status).toBe('canceled');
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
    // The test SMSC's totals (what the load bench reads past its log's limit) see the number texted twice.
    expect((await smsc.state()).totals).toEqual({ submits: 2, destinations: 1, destinationsTwice: 1 });
  });

  it('a resend the SMSC refuses (nothing sent) is refunded and leaves the request with its earlier message: delivered stays delivered, accepted still delivers, the code verifies', async () => {
    const t = await start();
    const account = await t.account({ balance: 1 });
    await new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true }).setWebhook(account.account_id, hookUrl);
    // Delivered, then a resend refused for good (ESME_RINVDSTADR for this number from now on).
    const delivered = await sendSms(t, account.auth, '+447700900731');
    expect(await finalStatus(t, account.auth, delivered)).toMatchObject({ status: 'delivered' });
    // Accepted with its receipt late, then a resend throttled past sms.retry.maxAttempts.
    await smsc.set({ receiptDelayMs: 4_000 });
    const accepted_ = await sendSms(t, account.auth, '+447700900732');
    await waitFor(async () => (await t.redis.hget(t.keys.verification(accepted_), 'sms_state')) === 'accepted' || undefined, 5_000);
    await smsc.set({ rejectPrefixes: { '447700900731': 0x0b, '447700900732': 0x58 } });
    for (const phone of ['+447700900731', '+447700900732']) {
      const again = await http(`${t.url}/v1/verify`, { auth: account.auth, body: { phone_number: phone, method: 'sms', code_length: 6, resend: true } });
      expect(again.status).toBe(200);
    }
    await waitFor(async () => t.logs.filter((l) => l.includes('the request keeps its earlier message')).length === 2 || undefined, 10_000);
    // The late receipt of the accepted one's first message still delivers it.
    expect(await finalStatus(t, account.auth, accepted_)).toMatchObject({ status: 'delivered' });
    for (const [id, phone] of [[delivered, '+447700900731'], [accepted_, '+447700900732']] as const) {
      const [first] = accepted(await submitsTo(phone));
      const ok = await http(`${t.url}/v1/verify/check`, { auth: account.auth, body: { request_id: id, code: codeIn(first!.text) } });
      expect([ok.status, (ok.body as { status: string }).status]).toEqual([200, 'verified']);
      expect((await readEvents(t.redis, t.keys)).filter((e) => e.request_id === id && e.status === 'failed')).toEqual([]);
      await waitFor(async () => hooksOf(id).some((h) => h.status === 'verified') || undefined, 5_000);
      expect(hooksOf(id).map((h) => h.status)).toEqual(['sent', 'delivered', 'verified']);
    }
    // Two sends billed, the two resends refunded.
    expect((await t.accounts.get(account.account_id)).balance).toBeCloseTo(1 - 2 * 0.03, 6);
  });

  it('a resend the SMSC refuses after the earlier message\'s failure receipt came meanwhile: the request fails (the resend refunded), not left waiting for a receipt that has come', async () => {
    const t = await start();
    const account = await t.account({ balance: 1 });
    // The test SMSC answers numbers ending 0091 with UNDELIV; 1 s late, so that it comes while the resend is pending.
    await smsc.set({ receiptDelayMs: 1_000 });
    const id = await sendSms(t, account.auth, '+447700900091');
    await waitFor(async () => (await t.redis.hget(t.keys.verification(id), 'sms_state')) === 'accepted' || undefined, 5_000);
    await smsc.set({ rejectPrefixes: { '447700900091': 0x58 } });
    const again = await http(`${t.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900091', method: 'sms', code_length: 6, resend: true } });
    expect(again.status).toBe(200);
    expect(await finalStatus(t, account.auth, id, 15_000)).toMatchObject({ status: 'failed' });
    // The first message was sent (billed); the resend never was (refunded).
    await waitFor(async () => Math.abs((await t.accounts.get(account.account_id)).balance - (1 - 0.03)) < 1e-9 || undefined, 5_000);
  });

  it('verified with the earlier code while the resend waits (throttled): the resend never left and is refunded; no copy of the sealed code outlives the request', async () => {
    const t = await start();
    const account = await t.account({ balance: 1 });
    const id = await sendSms(t, account.auth, '+447700900741');
    expect(await finalStatus(t, account.auth, id)).toMatchObject({ status: 'delivered' });
    await smsc.set({ rejectPrefixes: { '447700900741': 0x58 } });
    const again = await http(`${t.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900741', method: 'sms', code_length: 6, resend: true } });
    expect(again.status).toBe(200);
    const key = t.keys.verification(id);
    await waitFor(async () => (await t.redis.hget(key, 'sms_state')) === 'retry' || undefined, 5_000);
    // What resendVerification-5 keeps to take the resend back holds the code's ciphertext while the request lives.
    expect(JSON.parse((await t.redis.hget(key, 'resend_undo'))!)).toHaveProperty('code_enc');
    const [first] = accepted(await submitsTo('+447700900741'));
    const ok = await http(`${t.url}/v1/verify/check`, { auth: account.auth, body: { request_id: id, code: codeIn(first!.text) } });
    expect(ok.body).toMatchObject({ status: 'verified' });
    // One SMS sent, one billed.
    expect((await t.accounts.get(account.account_id)).balance).toBeCloseTo(1 - 0.03, 6);
    expect(await t.redis.hget(key, 'cost')).toBe('30000');
    expect(await t.redis.hget(key, 'code_enc')).toBeNull();
    expect(JSON.parse((await t.redis.hget(key, 'resend_undo'))!)).not.toHaveProperty('code_enc');
  });

  // (A workflow request is not resent: resend: true on a live workflow is 409, workflows.test.ts.)
  it('an SMS request sent again (resend): the receipt of its first message still counts, every message id stays mapped', async () => {
    const t = await start();
    const account = await t.account({ balance: 1 });
    await smsc.set({ receiptDelayMs: 1_500 });
    const id = await sendSms(t, account.auth, '+447700900971');
    await waitFor(async () => (await t.redis.hget(t.keys.verification(id), 'sms_state')) === 'accepted' || undefined, 5_000);
    // The second message gets no receipt: only the first one's DELIVRD can deliver the step.
    await smsc.set({ receipts: false });
    const again = await http(`${t.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900971', method: 'sms', code_length: 6, resend: true } });
    expect([again.status, (again.body as { request_id: string }).request_id]).toEqual([200, id]);
    await waitFor(async () => accepted(await submitsTo('+447700900971')).length === 2 || undefined, 5_000);
    const [first, second] = accepted(await submitsTo('+447700900971'));
    await waitFor(async () => (await t.redis.hget(t.keys.verification(id), 'sms_message_id')) === second!.messageId || undefined, 5_000);
    expect(await finalStatus(t, account.auth, id)).toMatchObject({ status: 'delivered' });
    const delivered = (await readEvents(t.redis, t.keys)).find((e) => e.request_id === id && e.status === 'delivered');
    expect(JSON.parse(delivered!.detail!)).toMatchObject({ smpp_message_id: first!.messageId, stat: 'DELIVRD' });
    expect(await t.redis.hget(t.keys.verification(id), 'sms_message_ids')).toBe(`${first!.messageId} ${second!.messageId}`);
  });

  it('an SMS request sent again: a failure receipt of the first message, arriving after the resend, does not fail it', async () => {
    const t = await start();
    const account = await t.account({ balance: 1 });
    // The first message fails late (UNDELIV after 3 s: after the resend, even on a loaded host); the resent one is
    // delivered later still.
    await smsc.set({ finalState: 'UNDELIV', receiptDelayMs: 3_000 });
    const id = await sendSms(t, account.auth, '+447700900972');
    await waitFor(async () => (await t.redis.hget(t.keys.verification(id), 'sms_state')) === 'accepted' || undefined, 5_000);
    await smsc.set({ finalState: 'DELIVRD', receiptDelayMs: 4_500 });
    const again = await http(`${t.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900972', method: 'sms', code_length: 6, resend: true } });
    expect([again.status, (again.body as { request_id: string }).request_id]).toEqual([200, id]);
    const [first] = accepted(await submitsTo('+447700900972'));
    // The first message's UNDELIV comes and is answered: the request is still live, and its code still verifies later.
    await waitFor(async () => (await smsc.state()).receipts.find((r) => r.respId === first!.messageId && r.done) ?? undefined, 8_000);
    await new Promise((r) => setTimeout(r, 300));
    expect((await http(`${t.url}/v1/verify/${id}`, { auth: account.auth })).body.status).toBe('sent');
    // Then the resent message's DELIVRD: delivered, and no failed event ever.
    expect(await finalStatus(t, account.auth, id)).toMatchObject({ status: 'delivered' });
    const events = (await readEvents(t.redis, t.keys)).filter((e) => e.request_id === id);
    expect(events.map((e) => e.status)).not.toContain('failed');
    const [, second] = accepted(await submitsTo('+447700900972'));
    const ok = await http(`${t.url}/v1/verify/check`, { auth: account.auth, body: { request_id: id, code: codeIn(second!.text) } });
    expect(ok.body).toMatchObject({ status: 'verified' });
  });

  it('submit_sm carries validity_period = the code\u2019s remaining life (relative), unless sms.validityFromExpiry is false', async () => {
    const t = await start();
    const account = await t.account({ balance: 1 });
    const before = Date.now();
    const id = await sendSms(t, account.auth, '+447700900973', { expiry_seconds: 120 });
    await waitFor(async () => accepted(await submitsTo('+447700900973')).length === 1 || undefined, 5_000);
    // The SMSC reads the relative period from the submit's arrival: it gives up when the code expires.
    const until = Date.parse(accepted(await submitsTo('+447700900973'))[0]!.validityPeriod);
    const expiresAt = Date.parse(String((await http(`${t.url}/v1/verify/${id}`, { auth: account.auth })).body.expires_at));
    expect(until).toBeGreaterThan(before + 100_000);
    expect(Math.abs(until - expiresAt)).toBeLessThanOrEqual(2_500);
    await t.stop();
    engine = undefined;
    const off = await start({}, { sms: { validityFromExpiry: false } });
    const a2 = await off.account({ balance: 1 });
    await sendSms(off, a2.auth, '+447700900974', { expiry_seconds: 120 });
    await waitFor(async () => accepted(await submitsTo('+447700900974')).length === 1 || undefined, 5_000);
    expect(accepted(await submitsTo('+447700900974'))[0]!.validityPeriod).toBe('');
  });

  it('sms.smscs[].accountTps: six SMS through a bind of 1000/s leave at the account\'s 2/s after its first second', async () => {
    const t = await start({ accountTps: 2 });
    const account = await t.account({ balance: 5 });
    const phones = Array.from({ length: 6 }, (_, i) => `+44770090071${i}`);
    const ids = await Promise.all(phones.map((p) => sendSms(t, account.auth, p)));
    for (const id of ids) expect((await finalStatus(t, account.auth, id)).status).toBe('delivered');
    const at = (await smsc.state()).submits.map((x) => x.at).sort((a, b) => a - b);
    expect(at).toHaveLength(6);
    // Two at once, the other four at 2/s: about 2 s from the first to the last.
    expect(at[5]! - at[0]!).toBeGreaterThanOrEqual(1800);
  });

  it('sms.smscs[].maxBinds: a worker configured for two binds opens the one the account allows, is ready, and sends through it', async () => {
    const t = await start({ binds: 2, maxBinds: 1 });
    const account = await t.account({ balance: 1 });
    await new Promise((r) => setTimeout(r, 500));
    expect((await smsc.state()).sessions.filter((x) => x.bound && x.closedAt === null)).toHaveLength(1);
    expect((await http(`${t.url}/readyz`)).body).toMatchObject({ checks: { smpp: true } });
    const id = await sendSms(t, account.auth, '+447700900720');
    expect((await finalStatus(t, account.auth, id)).status).toBe('delivered');
    // The account's one bind, counted in Redis as this worker's.
    expect(Object.values(await t.redis.hgetall(t.keys.smscBinds('default')))).toEqual(['1']);
  });

  it('SMSC down when the request comes: the job waits without using its attempts, and delivers once the bind is up', async () => {
    const t = await start({}, { sms: { retry: { firstDelayMs: 50, maxDelayMs: 100, maxAttempts: 2 } } });
    const account = await t.account({ balance: 1 });
    await smsc.set({ refuseBinds: true });
    await smsc.action('drop');
    await waitFor(async () => (await http(`${t.url}/readyz`)).status === 503, 5000);
    const id = await sendSms(t, account.auth, '+447700900501');
    // More no-bind waits than maxAttempts: none of them counted as an attempt.
    await waitFor(async () => Number(await t.redis.hget(t.keys.verification(id), 'sms_waits')) >= 4 || undefined, 10_000);
    expect(await t.redis.hget(t.keys.verification(id), 'sms_state')).toBe('retry');
    await smsc.set({ refuseBinds: false });
    expect(await finalStatus(t, account.auth, id, 15_000)).toMatchObject({ status: 'delivered' });
    expect(accepted(await submitsTo('+447700900501'))).toHaveLength(1);
    expect(await t.redis.hget(t.keys.verification(id), 'sms_attempts')).toBe('1');
  });

  it('canceled while its submit waits for a bind (SMSC down): nothing sent, refunded once', async () => {
    const t = await start({}, { sms: { retry: { firstDelayMs: 50, maxDelayMs: 100, maxAttempts: 2 } } });
    const account = await t.account({ balance: 1 });
    await smsc.set({ refuseBinds: true });
    await smsc.action('drop');
    await waitFor(async () => (await http(`${t.url}/readyz`)).status === 503, 5000);
    const id = await sendSms(t, account.auth, '+447700900503');
    const key = t.keys.verification(id);
    // The submit waits for a bind (up to the gateway's bind wait), marked `submitting`: the cancel lands then.
    await waitFor(async () => ((await t.redis.hget(key, 'sms_state')) === 'submitting' ? true : undefined), 5000, 5);
    const canceled = await http(`${t.url}/v1/verify/${id}/cancel`, { method: 'POST', auth: account.auth });
    expect(canceled.body.status).toBe('canceled');
    await waitFor(async () => ((await t.redis.hget(key, 'refunded')) === '1' ? true : undefined), 5000);
    expect((await t.accounts.get(account.account_id)).balance).toBe(1);
    expect((await http(`${t.url}/v1/usage`, { auth: account.auth })).body.total_cost).toMatchObject({ amount: 0 });
    expect(await t.redis.hget(key, 'status')).toBe('canceled');
    await smsc.set({ refuseBinds: false });
    await new Promise((r) => setTimeout(r, 1000));
    expect(await submitsTo('+447700900503')).toEqual([]);
  });

  it('an SMS step that times out while its submit waits for a bind (SMSC down): nothing sent, that step refunded once', async () => {
    const t = await start({}, { verification: { minStepTimeoutSeconds: 1 }, sms: { retry: { firstDelayMs: 50, maxDelayMs: 100, maxAttempts: 2 } } });
    const account = await t.account({ balance: 1 });
    await smsc.set({ refuseBinds: true });
    await smsc.action('drop');
    await waitFor(async () => (await http(`${t.url}/readyz`)).status === 503, 5000);
    // The submit spends nearly all its time waiting for a bind (marked `submitting`): the 2 s timeout lands then.
    const res = await http(`${t.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900504', workflow: [{ method: 'sms', timeout_seconds: 2 }, { method: 'voice' }] } });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    const key = t.keys.verification(String(res.body.request_id));
    await waitFor(async () => ((await t.redis.hget(key, 'att0_refunded')) === '1' ? true : undefined), 10_000);
    expect(await t.redis.hmget(key, 'att0_status', 'att0_cost')).toEqual(['timed_out', '0']);
    await smsc.set({ refuseBinds: false });
    await new Promise((r) => setTimeout(r, 500));
    expect(await submitsTo('+447700900504')).toEqual([]);
  });

  it('no bind up for longer than sms.noBindMaxWaitMs: failed smsc_no_bind, refunded, nothing sent', async () => {
    const t = await start({}, { sms: { noBindMaxWaitMs: 600, retry: { firstDelayMs: 50, maxDelayMs: 100, maxAttempts: 2 } } });
    const account = await t.account({ balance: 1 });
    await smsc.set({ refuseBinds: true });
    await smsc.action('drop');
    await waitFor(async () => (await http(`${t.url}/readyz`)).status === 503, 5000);
    const id = await sendSms(t, account.auth, '+447700900502');
    const status = await finalStatus(t, account.auth, id);
    expect([status.status, status.failure_reason]).toEqual(['failed', 'smsc_no_bind']);
    expect(Number(await t.redis.hget(t.keys.verification(id), 'sms_waits'))).toBeGreaterThanOrEqual(1);
    expect((await t.accounts.get(account.account_id)).balance).toBe(1);
    expect(await submitsTo('+447700900502')).toEqual([]);
  });

  it('a throttled submit waiting in the delayed set survives an engine restart: delivered once', async () => {
    const first = await start({}, { sms: { retry: { firstDelayMs: 300, maxDelayMs: 600, maxAttempts: 20 } } });
    const account = await first.account({ balance: 1 });
    await smsc.set({ throttleNext: 1_000 });
    const id = await sendSms(first, account.auth, '+447700900521');
    await waitFor(async () => (await first.redis.hget(first.keys.verification(id), 'sms_state')) === 'retry' || undefined, 5_000);
    // Stop the engine without removing its keys: the delayed job is all that remembers the send.
    engine = undefined;
    await first.engine.stop();
    await first.redis.quit();
    const throttledBefore = (await submitsTo('+447700900521')).length;
    expect(throttledBefore).toBeGreaterThanOrEqual(1);
    await smsc.set({ throttleNext: 0 });
    engine = await startTestEngine(first.config);
    const second = engine;
    expect(await finalStatus(second, account.auth, id)).toMatchObject({ status: 'delivered' });
    const subs = await submitsTo('+447700900521');
    expect(accepted(subs)).toHaveLength(1);
    expect(subs.filter((s) => s.status !== 0 && s.status !== 0x58)).toEqual([]);
  });
});
