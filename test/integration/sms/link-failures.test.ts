/**
 * The link going wrong: unanswered submits, dropped connections with submits
 * in flight, a silent SMSC, unknown and malformed PDUs, unbinds from either side.
 * Every submit promise must settle, and binds must come back by themselves.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { smsSchema } from '../../../src/config/schema.js';
import { SmppGateway } from '../../../src/sms/gateway.js';
import { findFreePort } from '../../helpers/sipp.js';
import { startStunnel, TestPki, type Stunnel } from '../../helpers/stunnel.js';
import { smscEntry, startGateway, startSmsc, submitRequest, type GatewayUnderTest, type SmscState, type TestSmsc } from '../../helpers/smsc.js';

let smsc: TestSmsc;
let gut: GatewayUnderTest | undefined;

beforeAll(async () => {
  smsc = await startSmsc({ receipts: false });
});
afterAll(async () => {
  await smsc?.stop();
});
afterEach(async () => {
  await gut?.gateway.stop();
  gut = undefined;
  await smsc.set({ respDelayMs: 0, noResponse: 'off', silentSessions: [], silentSubmitSessions: [], dropAfter: 0, rejectPrefixes: {}, wrongResponseFirst: false, unbindAfterBindMs: 0 });
  await smsc.reset();
});

async function boundSessionIds(): Promise<number[]> {
  return (await smsc.state()).sessions.filter((s) => s.bound && s.closedAt === null).map((s) => s.id);
}

describe('response timeout', () => {
  it('a submit_sm without response is not resent (unconfirmed), and the bind that never answers submits is recycled', async () => {
    gut = await startGateway([smscEntry(smsc, { binds: 2, responseTimeoutMs: 300, enquireLinkMs: 100 })]);
    await gut.waitUp();
    const [silent, live] = await boundSessionIds();
    await smsc.set({ silentSubmitSessions: [silent ?? -1] });
    // Sequential submits rotate over the binds, so some go to the silent one.
    const outcomes = [];
    for (let i = 0; i < 4; i += 1) outcomes.push(await gut.gateway.submit(submitRequest(`+44770090060${i}`)));
    const { submits } = await smsc.state();
    const onSilent = submits.filter((s) => s.session === silent);
    const onLive = submits.filter((s) => s.session === live && s.status === 0);
    expect(onSilent.length).toBeGreaterThanOrEqual(1);
    // One submit per message: the SMSC may have stored an unanswered one, so it is never resent.
    expect(submits).toHaveLength(4);
    expect(outcomes.filter((o) => o.kind === 'unconfirmed' && o.reason === 'timeout')).toHaveLength(onSilent.length);
    expect(outcomes.filter((o) => o.kind === 'accepted')).toHaveLength(onLive.length);
    // enquire_link is still answered there, yet the bind is stuck for submits: the client recycles it and binds again.
    const state = await smsc.waitFor(
      (s) => (s.sessions.find((x) => x.id === silent)?.closedAt !== null && s.sessions.filter((x) => x.bound && x.closedAt === null).length === 2 ? s : undefined),
      5_000,
      'the silent bind recycled',
    );
    const old = state.sessions.find((x) => x.id === silent)!;
    expect([old.closedBy, old.enquireLinks > 0]).toEqual(['client', true]);
    // SMPP 3.4 §4.2: the stuck bind is unbound (and its unbind_resp awaited) before the connection closes.
    expectUnboundBeforeClose(state, silent!);
    expect(state.events.some((e) => e.type === 'close' && e.session === live)).toBe(false);
    await gut.waitUp();
    for (let i = 0; i < 2; i += 1) expect((await gut.gateway.submit(submitRequest(`+44770090061${i}`))).kind).toBe('accepted');
  });

  it('submits that timed out still count in the window until answered or the bind is recycled: the SMSC never holds more than the window unanswered', async () => {
    gut = await startGateway([smscEntry(smsc, { binds: 1, window: 2, responseTimeoutMs: 300, enquireLinkMs: 100 })], { slotWaitMs: 100, bindWaitMs: 100 });
    await gut.waitUp();
    const [silent] = await boundSessionIds();
    await smsc.set({ silentSubmitSessions: [silent ?? -1] });
    const outcomes = [];
    for (let i = 0; i < 6; i += 1) outcomes.push(await gut.gateway.submit(submitRequest(`+44770090066${i}`)));
    const state = await smsc.state();
    const session = state.sessions.find((x) => x.id === silent)!;
    // Two went and timed out; the next found the window full (the SMSC still held those two), and went back unsent
    // (or, once the stuck bind was recycled, went on the new one): never a third unanswered on the silent bind.
    expect(state.submits.filter((x) => x.session === silent)).toHaveLength(2);
    expect(session.maxInFlight).toBe(2);
    expect(outcomes.filter((o) => o.kind === 'unconfirmed')).toHaveLength(2);
    expect(outcomes.slice(2, 5).map((o) => o.kind === 'retry' && o.reason)).toEqual(['no_bind', 'no_bind', 'no_bind']);
    // The stuck bind is recycled; on the new one the window is free again.
    await smsc.set({ silentSubmitSessions: [] });
    await smsc.waitFor((s) => s.sessions.some((x) => x.id !== silent && x.bound && x.closedAt === null) || undefined, 5_000, 'rebind');
    await gut.waitUp();
    expect(await gut.gateway.submit(submitRequest('+447700900669'))).toMatchObject({ kind: 'accepted' });
  });

  it('a submit_sm_resp that comes after the timeout is reported as a late acceptance', async () => {
    gut = await startGateway([smscEntry(smsc, { binds: 1, responseTimeoutMs: 300 })]);
    const late: { requestId: string; messageId: string }[] = [];
    gut.gateway.onLateResponse(({ requestId }, outcome) => outcome.kind === 'accepted' && late.push({ requestId, messageId: outcome.messageId }));
    await gut.waitUp();
    await smsc.set({ respDelayMs: 700 });
    const t = performance.now();
    const request = submitRequest('+447700900610');
    const outcome = await gut.gateway.submit(request);
    expect(outcome).toEqual({ kind: 'unconfirmed', reason: 'timeout', smsc: 'default', bind: 'default#0' });
    expect(performance.now() - t).toBeLessThan(650);
    await waitUntil(() => late.length === 1, 3_000);
    const { submits } = await smsc.state();
    expect(submits).toHaveLength(1);
    expect(late).toEqual([{ requestId: request.requestId, messageId: submits[0]!.messageId }]);
    expect(gut.gateway.status()[0]).toMatchObject({ inFlight: 0, bindsUp: 1 });
  });

  it('a late submit_sm_resp with an error is reported as the refusal an in-time one would be', async () => {
    gut = await startGateway([smscEntry(smsc, { binds: 1, responseTimeoutMs: 300 })]);
    const late: { requestId: string; outcome: unknown }[] = [];
    gut.gateway.onLateResponse(({ requestId }, outcome) => late.push({ requestId, outcome }));
    await gut.waitUp();
    await smsc.set({ respDelayMs: 700, rejectPrefixes: { '44770090061': 0x0b, '44770090062': 0x58 } });
    const refused = submitRequest('+447700900611');
    const throttled = submitRequest('+447700900621');
    const outcomes = await Promise.all([gut.gateway.submit(refused), gut.gateway.submit(throttled)]);
    expect(outcomes.map((o) => o.kind)).toEqual(['unconfirmed', 'unconfirmed']);
    await waitUntil(() => late.length === 2, 3_000);
    expect(late).toEqual(
      expect.arrayContaining([
        { requestId: refused.requestId, outcome: { kind: 'failed', reason: 'smsc_rejected', commandStatus: 0x0b, statusName: 'ESME_RINVDSTADR', smsc: 'default' } },
        { requestId: throttled.requestId, outcome: { kind: 'retry', reason: 'throttled', commandStatus: 0x58, smsc: 'default' } },
      ]),
    );
  });
});

describe('connection lost', () => {
  it('dropping the connection with submits in flight settles every promise, and the binds come back', async () => {
    gut = await startGateway([smscEntry(smsc, { binds: 2, window: 5, responseTimeoutMs: 5_000 })], { bindWaitMs: 2_000, slotWaitMs: 2_000 });
    await gut.waitUp();
    const before = await boundSessionIds();
    await smsc.set({ dropAfter: 6 });
    const t = performance.now();
    const outcomes = await Promise.all(Array.from({ length: 6 }, (_, i) => gut!.gateway.submit(submitRequest(`+44770090062${i}`))));
    // Settled long before the 5 s response timeout: the drop itself settled them.
    expect(performance.now() - t).toBeLessThan(4_000);
    for (const o of outcomes) {
      expect(o.kind === 'accepted' || (o.kind === 'unconfirmed' && o.reason === 'connection_lost')).toBe(true);
    }
    const state = await smsc.state();
    expect(state.events.filter((e) => e.type === 'drop').length).toBeGreaterThanOrEqual(1);
    await gut.waitUp(3_000);
    const after = await boundSessionIds();
    expect(after).toHaveLength(2);
    expect(after.some((id) => !before.includes(id))).toBe(true);
    expect(gut.gateway.status()[0]).toMatchObject({ bindsUp: 2, inFlight: 0 });
    expect((await gut.gateway.submit(submitRequest('+447700900629'))).kind).toBe('accepted');
  });

  it('the enquire_link watchdog reconnects when the SMSC stops answering', async () => {
    gut = await startGateway([smscEntry(smsc, { enquireLinkMs: 200, responseTimeoutMs: 200 })]);
    await gut.waitUp();
    const [first] = await boundSessionIds();
    await smsc.set({ silentSessions: [first ?? -1] });
    const state = await smsc.waitFor(
      (s) => (s.sessions.some((x) => x.id !== first && x.bound && x.closedAt === null) ? s : undefined),
      3_000,
      'a new bind',
    );
    const old = state.sessions.find((s) => s.id === first);
    expect(old?.closedBy).toBe('client');
    expect(old?.enquireLinks).toBeGreaterThanOrEqual(1);
    // An unbind is tried first even on a silent link (not answered here: closed after a bounded wait).
    expectUnboundBeforeClose(state, first!);
    await gut.waitUp();
    expect((await gut.gateway.submit(submitRequest('+447700900630'))).kind).toBe('accepted');
  });

  it('an unbind from the SMSC is answered, and the bind comes back', async () => {
    gut = await startGateway([smscEntry(smsc)]);
    await gut.waitUp();
    const [first] = await boundSessionIds();
    const [sent] = await smsc.action('unbind');
    await smsc.waitFor((s) => s.events.find((e) => e.type === 'unbind_resp' && e.seq === sent?.seq), 2_000, 'unbind_resp');
    await smsc.waitFor((s) => s.sessions.some((x) => x.id !== first && x.bound && x.closedAt === null) || undefined, 3_000, 'rebind');
    await gut.waitUp();
  });

  it('a stream that cannot be framed (command_length 8) is answered generic_nack ESME_RINVCMDLEN, and the bind reconnects', async () => {
    gut = await startGateway([smscEntry(smsc)]);
    await gut.waitUp();
    const [first] = await boundSessionIds();
    await smsc.action('bad_length');
    await smsc.waitFor((s) => s.sessions.some((x) => x.id !== first && x.bound && x.closedAt === null) || undefined, 3_000, 'rebind');
    // The nack left before the connection was dropped (SMPP 3.4 §4.3.1: no sequence number to carry).
    const nack = (await smsc.state()).events.find((e) => e.type === 'generic_nack' && e.session === first);
    expect(nack).toMatchObject({ seq: 0, status: 0x02 });
  });
});

describe('SMPP over TLS (smpps://, stunnel in front of the test SMSC)', () => {
  it('sms.smscs[].tls.caFile: an SMSC with a private CA is verified against it, binds and takes submits; tls on an smpp:// SMSC is a config error', async () => {
    const pki = new TestPki();
    let tunnel: Stunnel | undefined;
    try {
      const ca = pki.ca('smsc-ca');
      const port = await findFreePort();
      tunnel = await startStunnel({ dir: pki.dir, acceptPort: port, connectPort: Number(new URL(smsc.url).port), cert: pki.leaf('smsc', 'smsc-ca', 'IP:127.0.0.1') });
      gut = await startGateway([smscEntry(smsc, { url: `smpps://flashverify:secret@127.0.0.1:${port}`, tls: { caFile: ca } } as Record<string, unknown>)]);
      await gut.waitUp();
      expect(await gut.gateway.submit(submitRequest('+447700900670'))).toMatchObject({ kind: 'accepted' });
      expect(tunnel.log()).toMatch(/accepted connection/);
      // A CA file that is no PEM bundle: refused at start, naming the SMSC (as a TLS trunk's is), not at the first connection.
      const notPem = join(pki.dir, 'not-a-ca.pem');
      writeFileSync(notPem, 'hello\n');
      const bad = smsSchema.parse({ smscs: [smscEntry(smsc, { url: `smpps://flashverify:secret@127.0.0.1:${port}`, tls: { caFile: notPem } } as Record<string, unknown>)] });
      expect(() => SmppGateway.fromConfig(bad, pino({ level: 'silent' }))).toThrow(/sms\.smscs\[default\]\.tls: cannot load the CA bundle .*no PEM certificate/);
      const plain = smsSchema.safeParse({ smscs: [smscEntry(smsc, { tls: { caFile: ca } } as Record<string, unknown>)] });
      expect(plain.success).toBe(false);
      expect(plain.error?.issues.map((i) => i.message).join('; ')).toMatch(/tls settings are for an smpps:\/\/ SMSC/);
    } finally {
      await gut?.gateway.stop();
      gut = undefined;
      tunnel?.stop();
      pki.remove();
    }
  });

  it('smpps:// to an SMSC (stunnel in front of the test SMSC) whose certificate is not trusted: the connection down line names the certificate failure', async () => {
    const pki = new TestPki();
    let tunnel: Stunnel | undefined;
    let gateway: SmppGateway | undefined;
    try {
      pki.ca('smsc-ca');
      const port = await findFreePort();
      tunnel = await startStunnel({ dir: pki.dir, acceptPort: port, connectPort: Number(new URL(smsc.url).port), cert: pki.leaf('smsc', 'smsc-ca', 'IP:127.0.0.1') });
      const lines: Record<string, unknown>[] = [];
      const logger = pino({ level: 'warn' }, { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
      const sms = smsSchema.parse({ smscs: [smscEntry(smsc, { url: `smpps://flashverify:secret@127.0.0.1:${port}` })] });
      gateway = SmppGateway.fromConfig(sms, logger, { slotWaitMs: 100, bindWaitMs: 100, stopTimeoutMs: 500 });
      await gateway.start();
      const deadline = Date.now() + 3000;
      while (!lines.some((l) => l['msg'] === 'connection down') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      const down = lines.find((l) => l['msg'] === 'connection down');
      // Before: "connection closed" alone (the certificate's refusal was a debug line).
      expect(String(down?.['reason'])).toMatch(/^connection closed: .*certificate/);
    } finally {
      await gateway?.stop();
      tunnel?.stop();
      pki.remove();
    }
  });
});

describe('an SMSC that misbehaves after the bind', () => {
  it('unbinds every bind at once: the rebinds back off (reconnectMinMs doubling), not one every reconnectMinMs for ever', async () => {
    await smsc.set({ unbindAfterBindMs: 20 });
    gut = await startGateway([smscEntry(smsc, { reconnectMinMs: 100, reconnectMaxMs: 2000 })]);
    await new Promise((r) => setTimeout(r, 3000));
    const binds = (await smsc.state()).events.filter((e) => e.type === 'bind').length;
    // Back-off 50-100, 100-200, 200-400, 400-800, 800-1600 ms: at most 6 binds in 3 s (about 25 without it).
    expect(binds).toBeGreaterThanOrEqual(3);
    expect(binds).toBeLessThanOrEqual(6);
  });

  it('the SMSC lost the bind (ESME_RINVBNDSTS to a submit): the submit goes back unsent (another bind\'s), the bind is made again', async () => {
    gut = await startGateway([smscEntry(smsc)]);
    await gut.waitUp();
    const [first] = await boundSessionIds();
    await smsc.action('forget_bind');
    expect(await gut.gateway.submit(submitRequest('+447700900651'))).toMatchObject({ kind: 'retry', reason: 'connection_lost', commandStatus: 0x04 });
    await smsc.waitFor((s) => s.sessions.some((x) => x.id !== first && x.bound && x.closedAt === null) || undefined, 3_000, 'rebind');
    await gut.waitUp();
    expect(await gut.gateway.submit(submitRequest('+447700900651'))).toMatchObject({ kind: 'accepted' });
  });

  it('a response of another command carrying a submit\'s sequence number is ignored: the submit takes its own submit_sm_resp', async () => {
    await smsc.set({ wrongResponseFirst: true });
    gut = await startGateway([smscEntry(smsc)]);
    await gut.waitUp();
    expect(await gut.gateway.submit(submitRequest('+447700900650'))).toMatchObject({ kind: 'accepted' });
  });
});

describe('PDUs the session does not expect', () => {
  it('answers an unknown command id with generic_nack ESME_RINVCMDID and keeps the bind', async () => {
    gut = await startGateway([smscEntry(smsc)]);
    await gut.waitUp();
    const [session] = await boundSessionIds();
    const [sent] = await smsc.action('unknown_command');
    const nack = await smsc.waitFor((s) => s.events.find((e) => e.type === 'generic_nack' && e.seq === sent?.seq), 2_000, 'generic_nack');
    expect(nack).toMatchObject({ session, status: 0x03 });
    expect(await boundSessionIds()).toEqual([session]);
    expect((await gut.gateway.submit(submitRequest('+447700900640'))).kind).toBe('accepted');
    expect((await smsc.state()).submits[0]?.session).toBe(session);
  });

  it('answers a malformed PDU with generic_nack ESME_RINVCMDLEN and keeps reading', async () => {
    gut = await startGateway([smscEntry(smsc)]);
    await gut.waitUp();
    const [session] = await boundSessionIds();
    const [sent] = await smsc.action('malformed');
    const nack = await smsc.waitFor((s) => s.events.find((e) => e.type === 'generic_nack' && e.seq === sent?.seq), 2_000, 'generic_nack');
    expect(nack).toMatchObject({ session, status: 0x02 });
    expect((await gut.gateway.submit(submitRequest('+447700900641'))).kind).toBe('accepted');
    expect(await boundSessionIds()).toEqual([session]);
  });

  it('answers enquire_link from the SMSC', async () => {
    gut = await startGateway([smscEntry(smsc)]);
    await gut.waitUp();
    const [sent] = await smsc.action('enquire_link');
    const resp = await smsc.waitFor((s) => s.events.find((e) => e.type === 'enquire_link_resp' && e.seq === sent?.seq), 2_000, 'enquire_link_resp');
    expect(resp).toMatchObject({ status: 0 });
  });
});

describe('stop', () => {
  it('unbinds every bind cleanly and waits for unbind_resp', async () => {
    await smsc.set({ respDelayMs: 200 });
    gut = await startGateway([smscEntry(smsc, { binds: 2 })]);
    await gut.waitUp();
    const inFlight = gut.gateway.submit(submitRequest('+447700900650'));
    await new Promise((r) => setTimeout(r, 20));
    await gut.gateway.stop();
    // The submit in flight was answered before the unbind.
    expect((await inFlight).kind).toBe('accepted');
    const state = await smsc.state();
    const sessions = state.sessions.filter((s) => s.bound);
    expect(sessions).toHaveLength(2);
    for (const s of sessions) {
      expect(s.unbindReceived).toBe(true);
      expect(s.closedBy).toBe('client');
      const unbind = state.events.find((e) => e.type === 'unbind' && e.session === s.id);
      expect(unbind?.inFlight).toBe(0);
    }
    expect(await gut.gateway.submit(submitRequest('+447700900651'))).toEqual({ kind: 'retry', reason: 'no_bind' });
    gut = undefined;
  });
});

/** The SMSC saw an unbind on `session`, then the client closed it. */
function expectUnboundBeforeClose(state: SmscState, session: number): void {
  const unbind = state.events.find((e) => e.type === 'unbind' && e.session === session);
  const close = state.events.find((e) => e.type === 'close' && e.session === session);
  expect(unbind, 'unbind received before the close').toBeDefined();
  expect(close).toMatchObject({ closedBy: 'client' });
  expect(unbind!.at).toBeLessThanOrEqual(close!.at);
}

async function waitUntil(cond: () => boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (let i = 0; i < 10_000 && Date.now() < end; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('timed out');
}
