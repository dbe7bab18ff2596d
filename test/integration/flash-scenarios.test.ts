import { afterEach, describe, expect, it } from 'vitest';
import type { DeepPartial } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { distinctTransactions, findFreePort, SIPP_TEST_CREDENTIALS, sipUriUser, startSippUas, verifyDigestResponse, type SippUas } from '../helpers/sipp.js';
import { http, readEvents, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';

/**
 * The engine (api + flash worker + events consumer, embedded SIP stack) against
 * a real SIPp far end for every behaviour of design.md "Flash call, precisely":
 * the call outcome, the SIP status, the events in the stream and the final
 * verification status.
 */
const T1 = 50; // Timer B = 64 * T1 = 3.2 s
const RING_MS = 300;
const RINGING_TIMEOUT_MS = 1500;

let engine: TestEngine | undefined;
let uas: SippUas | undefined;
afterEach(async () => {
  await uas?.stop();
  await engine?.stop();
  uas = undefined;
  engine = undefined;
});

interface Run {
  status: string;
  record: Record<string, string>;
  events: Record<string, string>[];
  body: Record<string, unknown>;
  balanceBefore: number;
  balanceAfter: number;
}

async function flashCall(
  scenario: string,
  opts: { transport?: 'udp' | 'tcp'; trunk?: DeepPartial<Config['sip']['trunks'][number]>; vars?: Record<string, number>; final?: string[] } = {},
): Promise<Run> {
  const transport = opts.transport ?? 'udp';
  uas = await startSippUas({ scenario, transport, vars: opts.vars, maxLifetimeMs: 30_000 });
  engine = await startTestEngine(
    testConfig({
      flash: { ringMs: RING_MS, ringingTimeoutMs: RINGING_TIMEOUT_MS },
      sip: { timers: { t1Ms: T1, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri, ...(opts.trunk ?? {}) }] },
    }),
  );
  const account = await engine.account({ balance: 1 });
  const created = await http(`${engine.url}/v1/verify`, {
    auth: account.auth,
    body: { phone_number: '+447700900123', method: 'flash_call' },
  });
  expect(created.status).toBe(201);
  const id = String(created.body.request_id);
  const balanceBefore = (await engine.accounts.get(account.account_id)).balance;
  const key = engine.keys.verification(id);
  const final = opts.final ?? ['delivered', 'failed'];
  // The worker writes `outcome` when the call is over; the status follows from the events.
  const record = await waitFor(async () => {
    const h = await engine!.redis.hgetall(key);
    return h.outcome && final.includes(h.status ?? '') ? h : undefined;
  }, 15_000);
  const body = (await http(`${engine.url}/v1/verify/${id}`, { auth: account.auth })).body;
  const events = (await readEvents(engine.redis, engine.keys)).filter((e) => e.request_id === id);
  return {
    status: String(body.status),
    record,
    events,
    body,
    balanceBefore,
    balanceAfter: (await engine.accounts.get(account.account_id)).balance,
  };
}

describe('flash call against SIPp', () => {
  it.each(['udp', 'tcp'] as const)('rings then CANCEL → 487: delivered (%s)', async (transport) => {
    const run = await flashCall('uas-ring-cancel', { transport });
    expect(run.record.outcome).toBe('cancelled');
    expect(run.record.final_sip_status).toBe('487');
    expect(run.status).toBe('delivered');
    expect(run.events.map((e) => e.status)).toEqual(['sent', 'delivered']);
    expect(JSON.parse(run.events[1]!.detail!)).toMatchObject({ sip_status: 180, trunk: 'sipp' });
    const exit = await uas!.waitForExit(10_000);
    expect(exit.code).toBe(0);
    // One transaction each; over UDP a slow 487 may draw a CANCEL retransmission (same Via branch and CSeq), over TCP none.
    const sent = uas!.requests();
    expect(distinctTransactions(sent).map((m) => m.method)).toEqual(['INVITE', 'CANCEL', 'ACK']);
    if (transport === 'tcp') expect(sent).toHaveLength(3);
    // The CANCEL followed the 180 by about ringMs, never before it.
    const invite = uas!.requests('INVITE')[0]!;
    expect(invite.body).toBe('');
    expect(sipUriUser(invite.header('from'))).toMatch(/^\+44190873\d{4}$/);
    expect(sipUriUser(invite.header('p-asserted-identity'))).toBe(sipUriUser(invite.header('from')));
    expect(sipUriUser(invite.header('to'))).toBe('+447700900123');
  });

  it('ignores 183 for ringing, rings on the 180 after it', async () => {
    const run = await flashCall('uas-183-then-180-cancel');
    expect(run.status).toBe('delivered');
    expect(JSON.parse(run.events[1]!.detail!).sip_status).toBe(180);
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
  });

  it('treats 183 as ringing on a trunk with ringOn183', async () => {
    const run = await flashCall('uas-183-only-cancel', { trunk: { ringOn183: true } });
    expect(run.status).toBe('delivered');
    expect(JSON.parse(run.events[1]!.detail!).sip_status).toBe(183);
    expect(run.record.outcome).toBe('cancelled');
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
  });

  it('a 200 that crosses the CANCEL is ACKed then BYEd at once: answered', async () => {
    const run = await flashCall('uas-200-crossing-cancel');
    expect(run.record.outcome).toBe('answered');
    expect(run.status).toBe('delivered');
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    expect(uas!.requests().map((m) => m.method)).toEqual(['INVITE', 'CANCEL', 'ACK', 'BYE']);
    // The 2xx carried an offer (the INVITE had none): the ACK answers it, declining the stream (RFC 3261 13.2.2.4).
    const ack = uas!.requests('ACK')[0]!;
    expect(ack.header('content-type')).toBe('application/sdp');
    expect(ack.body).toMatch(/^m=audio 0 RTP\/AVP 0\r?$/m);
  });

  it('rang, CANCEL answered, no 487 ever: cancelled after 64*T1, delivered, and no made-up final SIP status', async () => {
    const run = await flashCall('uas-ring-cancel-no-487');
    expect(run.record.outcome).toBe('cancelled');
    expect(run.status).toBe('delivered');
    expect(run.record.final_sip_status).toBeUndefined();
    const exit = await uas!.waitForExit(15_000);
    expect(exit.code, exit.errors).toBe(0);
  });

  it('a forked branch that answers after the 487 is ACKed (with an answer) and BYEd once', async () => {
    const run = await flashCall('uas-487-then-forked-200');
    // The flash itself: rang, then cancelled (the late 2xx changes nothing reported).
    expect(run.record.outcome).toBe('cancelled');
    expect(run.status).toBe('delivered');
    // The scenario fails on a missing ACK or BYE, an ACK without the answer, or a second BYE.
    const exit = await uas!.waitForExit(15_000);
    expect(exit.code, exit.errors).toBe(0);
    const byes = uas!.requests('BYE');
    expect(new Set(byes.map((m) => m.header('cseq'))).size).toBe(1);
    expect(byes[0]!.header('to')).toMatch(/tag=\S*SIPpTag02/);
    const acksOfLate = uas!.requests('ACK').filter((m) => /SIPpTag02/.test(m.header('to') ?? ''));
    expect(acksOfLate).toHaveLength(1);
    expect(acksOfLate[0]!.body).toMatch(/^m=audio 0 RTP\/AVP 0\r?$/m);
  });

  it('a 200 before any CANCEL is answered and hung up', async () => {
    const run = await flashCall('uas-answer');
    expect(run.record.outcome).toBe('answered');
    expect(run.status).toBe('delivered');
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    expect(uas!.requests().map((m) => m.method)).toEqual(['INVITE', 'ACK', 'BYE']);
  });

  it.each([
    ['uas-busy-486', 'busy', 486, 17],
    ['uas-busy-everywhere-600', 'busy', 600, undefined],
    ['uas-decline-603', 'declined', 603, undefined],
    ['uas-not-found-404', 'not_found', 404, 1],
    ['uas-unavailable-480', 'unavailable', 480, undefined],
  ] as const)('%s → failed %s with the SIP status (and the Q.850 cause of its Reason header), still billed', async (scenario, reason, sipStatus, q850) => {
    const run = await flashCall(scenario);
    expect(run.status).toBe('failed');
    expect(run.body.failure_reason).toBe(reason);
    expect(run.record.sip_status).toBe(String(sipStatus));
    expect(run.events.map((e) => e.status)).toEqual(['sent', 'failed']);
    expect(JSON.parse(run.events[1]!.detail!)).toMatchObject({ reason, sip_status: sipStatus });
    // The release cause a carrier's gateway gave (RFC 3326 Reason, Q.850), when it gave one; the SIP one of 486's is not it.
    expect(JSON.parse(run.events[1]!.detail!).q850_cause).toBe(q850);
    expect(run.balanceAfter).toBe(run.balanceBefore);
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
  });

  it('no 18x within ringingTimeoutMs → CANCEL → failed no_ringing', async () => {
    const run = await flashCall('uas-trying-only');
    expect(run.status).toBe('failed');
    expect(run.body.failure_reason).toBe('no_ringing');
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    expect(uas!.requests().map((m) => m.method)).toContain('CANCEL');
  });

  it('no response at all → Timer B → failed timeout, refunded', async () => {
    const run = await flashCall('uas-no-response', { vars: { hold_ms: 64 * T1 + 1500 } });
    expect(run.status).toBe('failed');
    expect(run.body.failure_reason).toBe('timeout');
    expect(run.balanceAfter).toBeCloseTo(run.balanceBefore + 0.004, 6);
    // No CANCEL before a provisional response (RFC 3261 9.1): SIPp exits 0 only then.
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
  });

  it('canceled while the INVITE goes unanswered: Timer B later still refunds the call that never reached the network', async () => {
    uas = await startSippUas({ scenario: 'uas-no-response', vars: { hold_ms: 64 * T1 + 1500 }, maxLifetimeMs: 30_000 });
    engine = await startTestEngine(
      testConfig({
        flash: { ringMs: RING_MS, ringingTimeoutMs: RINGING_TIMEOUT_MS },
        sip: { timers: { t1Ms: T1, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] },
      }),
    );
    const account = await engine.account({ balance: 1 });
    const created = await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900125', method: 'flash_call' } });
    const id = String(created.body.request_id);
    await uas.waitForMessage((m) => m.direction === 'received' && m.method === 'INVITE', 10_000);
    // Dialled: the cancel itself refunds nothing (the call may have reached the network).
    const canceled = await http(`${engine.url}/v1/verify/${id}/cancel`, { auth: account.auth, method: 'POST' });
    expect(canceled.body.status).toBe('canceled');
    expect((await engine.accounts.get(account.account_id)).balance).toBeCloseTo(0.996, 6);
    // Timer B (64*T1): the INVITE never got any answer: refunded once, the request stays canceled.
    await waitFor(async () => (await engine!.redis.hget(engine!.keys.verification(id), 'outcome')) === 'request_ended', 10_000);
    await waitFor(async () => (await engine!.accounts.get(account.account_id)).balance > 0.999, 5000);
    await new Promise((r) => setTimeout(r, 300));
    expect((await engine.accounts.get(account.account_id)).balance).toBeCloseTo(1, 6);
    const shown = await http(`${engine.url}/v1/verify/${id}`, { auth: account.auth });
    expect(shown.body.status).toBe('canceled');
    expect((shown.body.status_history as { status: string }[]).map((h) => h.status)).toEqual(['sent', 'canceled']);
  });

  it('canceled while its call waits for the trunk (CPS): never dialled, refunded', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', maxLifetimeMs: 30_000 });
    engine = await startTestEngine(
      testConfig({
        flash: { ringMs: RING_MS, ringingTimeoutMs: RINGING_TIMEOUT_MS },
        sip: { timers: { t1Ms: T1, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri, cps: 1 }] },
      }),
    );
    const account = await engine.account({ balance: 1 });
    const first = await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900126', method: 'flash_call' } });
    const second = await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900127', method: 'flash_call' } });
    const id = String(second.body.request_id);
    // One call per second on this trunk: the second waits for its token; it is canceled meanwhile.
    await waitFor(async () => (await engine!.redis.hget(engine!.keys.verification(id), 'dial_started')) !== null, 5000, 10);
    expect((await http(`${engine.url}/v1/verify/${id}/cancel`, { auth: account.auth, method: 'POST' })).body.status).toBe('canceled');
    await waitFor(async () => (await engine!.redis.hget(engine!.keys.verification(id), 'outcome')) === 'request_ended', 5000);
    await waitFor(async () => (await engine!.accounts.get(account.account_id)).balance > 0.9959, 5000);
    expect((await engine.accounts.get(account.account_id)).balance).toBeCloseTo(1 - 0.004, 6); // the first call only
    expect((await uas.waitForExit(10_000)).code).toBe(0);
    const invited = new Set(uas.requests('INVITE').map((m) => sipUriUser(m.startLine.split(' ')[1] ?? '')));
    expect([...invited]).toEqual(['+447700900126']);
    expect(first.status).toBe(201);
  });

  it.each(['udp', 'tcp'] as const)('answers a 407 challenge with digest credentials (%s)', async (transport) => {
    const { username, password } = SIPP_TEST_CREDENTIALS;
    const run = await flashCall('uas-407-challenge', { transport, trunk: { auth: { username, password } } });
    expect(run.status).toBe('delivered');
    expect(run.record.outcome).toBe('cancelled');
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    // Two INVITE transactions (a slow answer over UDP may draw a retransmission of either; over TCP none).
    const invites = distinctTransactions(uas!.requests('INVITE'));
    expect(invites).toHaveLength(2);
    if (transport === 'tcp') expect(uas!.requests('INVITE')).toHaveLength(2);
    // SIPp cannot check a Proxy-Authorization itself: recompute the digest here (RFC 2617 3.2.2).
    expect(verifyDigestResponse(invites[1]!.header('proxy-authorization'), { method: 'INVITE', username, password, realm: SIPP_TEST_CREDENTIALS.realm })).toBe(true);
    expect(verifyDigestResponse(invites[1]!.header('proxy-authorization'), { method: 'INVITE', password: 'wrong' })).toBe(false);
    expect(invites[1]!.header('call-id')).toBe(invites[0]!.header('call-id'));
  });

  it('a 407 without credentials configured fails rejected 407, and a warn line tells the operator to set them', async () => {
    const run = await flashCall('uas-407-challenge');
    expect(run.status).toBe('failed');
    expect(run.body.failure_reason).toBe('rejected');
    expect(run.record.sip_status).toBe('407');
    const warn = engine!.logs.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l['msg'] === 'the trunk asks for digest credentials: set sip.trunks[].auth');
    expect(warn).toMatchObject({ level: 40, trunk: 'sipp', status: 407, call_id: uas!.requests('INVITE')[0]!.header('call-id') });
    expect(warn!['challenges']).toEqual([`realm="${SIPP_TEST_CREDENTIALS.realm}" algorithm=MD5`]);
  });
});

describe('flash call to a trunk that is not there', () => {
  it.each(['udp', 'tcp'] as const)('fails unreachable at once and refunds (%s)', async (transport) => {
    const port = await findFreePort();
    engine = await startTestEngine(
      testConfig({
        sip: { timers: { t1Ms: 500 }, trunks: [{ name: 'dead', uri: `sip:127.0.0.1:${port}${transport === 'tcp' ? ';transport=tcp' : ''}` }] },
      }),
    );
    const account = await engine.account({ balance: 1 });
    const created = await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900124' } });
    const id = String(created.body.request_id);
    const started = Date.now();
    const body = await waitFor(async () => {
      const r = await http(`${engine!.url}/v1/verify/${id}`, { auth: account.auth });
      return r.body.status === 'failed' ? r.body : undefined;
    }, 10_000);
    // Well before Timer B (32 s with T1 = 500 ms): the ICMP / RST was heard.
    expect(Date.now() - started).toBeLessThan(5000);
    expect(body.failure_reason).toBe('unreachable');
    expect((await engine.accounts.get(account.account_id)).balance).toBe(1);
  });
});
