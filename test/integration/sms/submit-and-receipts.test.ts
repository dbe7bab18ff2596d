/**
 * Submits and delivery receipts against the real test SMSC (smsc-test/) over
 * loopback: what the SMSC receives, what the worker gets back, and how
 * receipts of every form end up as DeliveryReceipt.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { smscEntry, startGateway, startSmsc, submitRequest, type GatewayUnderTest, type TestSmsc } from '../../helpers/smsc.js';

let smsc: TestSmsc;
let gut: GatewayUnderTest | undefined;

beforeAll(async () => {
  smsc = await startSmsc();
});
afterAll(async () => {
  await smsc?.stop();
});
afterEach(async () => {
  await gut?.gateway.stop();
  gut = undefined;
  await smsc.set({
    idFormat: 'decimal',
    receiptMode: 'both',
    receiptPdu: 'deliver_sm',
    receiptBeforeResp: false,
    finalState: null,
    rejectPrefixes: {},
    throttleNext: 0,
    queueFullNext: 0,
    respDelayMs: 0,
    refuseBinds: false,
    receiptDelayMs: 20,
  });
  await smsc.reset();
});

async function gateway(overrides: Record<string, unknown> = {}, options = {}): Promise<GatewayUnderTest> {
  gut = await startGateway([smscEntry(smsc, overrides)], options);
  await gut.waitUp();
  return gut;
}

describe('bind, submit, receipt', () => {
  it('binds with system_id/password, submits the text, and matches the receipt to the submit', async () => {
    const g = await gateway();
    const outcome = await g.gateway.submit(submitRequest('+447700900123', { code: '482916' }));
    expect(outcome).toMatchObject({ kind: 'accepted', smsc: 'default', bind: 'default#0' });
    const receipt = await g.receiptFor(outcome);
    expect(receipt).toMatchObject({ smsc: 'default', state: 'DELIVRD' });

    const state = await smsc.state();
    expect(state.sessions.filter((s) => s.bound)).toHaveLength(1);
    expect(state.sessions[0]).toMatchObject({ systemId: 'flashverify', bindType: 'transceiver' });
    const bind = state.events.find((e) => e.type === 'bind');
    expect(bind).toMatchObject({ status: 0, interfaceVersion: 0x34 });
    expect(state.submits).toHaveLength(1);
    expect(state.submits[0]).toMatchObject({
      destination: '447700900123',
      destTon: 1,
      destNpi: 1,
      source: 'FlashVerify',
      dataCoding: 0,
      registeredDelivery: 1,
      text: 'Your FlashVerify code is: 482916',
    });
    expect(state.receipts[0]?.statuses).toEqual([0]);
  });

  it('sends UCS-2 text as data_coding 8', async () => {
    const g = await gateway();
    const outcome = await g.gateway.submit(submitRequest('+79161234567', { template: 'Ваш код: {code}', code: '135790' }));
    expect(outcome.kind).toBe('accepted');
    const { submits } = await smsc.state();
    expect(submits[0]).toMatchObject({ dataCoding: 8, text: 'Ваш код: 135790' });
  });

  it('sends packed GSM-7 when the SMSC is configured for it', async () => {
    await smsc.set({ gsm7Packed: true });
    try {
      const g = await gateway({ gsm7Packed: true });
      expect((await g.gateway.submit(submitRequest('+447700900124', { code: '246802' }))).kind).toBe('accepted');
      const { submits } = await smsc.state();
      expect(submits[0]?.text).toBe('Your FlashVerify code is: 246802');
      // 32 septets packed into 28 octets.
      expect(submits[0]?.hex.length).toBe(28 * 2);
    } finally {
      await smsc.set({ gsm7Packed: false });
    }
  });

  it('matches receipts when the SMSC writes the id in hex in the response and decimal in the receipt', async () => {
    await smsc.set({ idFormat: 'hex_resp_decimal_dlr' });
    const g = await gateway({ messageIdFormat: 'hex_resp_decimal_dlr' });
    const outcome = await g.gateway.submit(submitRequest('+447700900125'));
    const { submits, receipts } = await smsc.waitFor((s) => (s.receipts[0]?.done ? s : undefined), 3_000, 'receipt');
    expect(submits[0]?.messageId).toMatch(/^[0-9A-F]+$/);
    expect(receipts[0]?.dlrId).toBe(String(parseInt(submits[0]?.messageId ?? '', 16)));
    expect(outcome).toMatchObject({ kind: 'accepted', rawMessageId: submits[0]?.messageId });
    expect((await g.receiptFor(outcome)).state).toBe('DELIVRD');
  });

  it('matches receipts with hex ids on both sides', async () => {
    await smsc.set({ idFormat: 'hex' });
    const g = await gateway({ messageIdFormat: 'hex' });
    const outcome = await g.gateway.submit(submitRequest('+447700900126'));
    expect(outcome.kind === 'accepted' && outcome.rawMessageId).toMatch(/^[0-9A-F]+$/);
    expect((await g.receiptFor(outcome)).state).toBe('DELIVRD');
  });

  it.each(['tlv', 'text'] as const)('reads receipts carried in %s only', async (mode) => {
    await smsc.set({ receiptMode: mode, idFormat: 'string' });
    const g = await gateway({ messageIdFormat: 'string' });
    const outcome = await g.gateway.submit(submitRequest('+447700900091'));
    const receipt = await g.receiptFor(outcome);
    expect(receipt.state).toBe('UNDELIV');
    const { receipts } = await smsc.state();
    expect(receipts[0]?.mode).toBe(mode);
  });

  it.each([
    ['the UDHI bit set and no header (esm_class 0x44)', { receiptEsmClass: 0x44 }],
    ['the submit\'s data_coding 8 over ASCII text', { receiptDataCoding: 8 }],
  ] as const)('reads a text-only receipt sent with %s (decoded, it says nothing; its octets are ASCII)', async (_name, quirk) => {
    await smsc.set({ receiptMode: 'text', idFormat: 'string', ...quirk });
    const g = await gateway({ messageIdFormat: 'string' });
    const outcome = await g.gateway.submit(submitRequest('+447700900094'));
    const receipt = await g.receiptFor(outcome);
    expect(receipt).toMatchObject({ state: 'DELIVRD', messageId: outcome.kind === 'accepted' ? outcome.messageId : 'none' });
  });

  it('matches a receipt that arrives before its submit_sm_resp', async () => {
    await smsc.set({ receiptBeforeResp: true, respDelayMs: 100 });
    const g = await gateway();
    const pending = g.gateway.submit(submitRequest('+447700900127'));
    await smsc.waitFor((s) => s.receipts[0]?.done, 3_000, 'receipt answered');
    expect(g.receipts).toHaveLength(1);
    let settled = false;
    void pending.then(() => (settled = true));
    await new Promise((r) => setImmediate(r));
    expect(settled).toBe(false);
    const outcome = await pending;
    expect(g.receipts[0]?.messageId).toBe(outcome.kind === 'accepted' ? outcome.messageId : undefined);
  });

  it('reports the final state by destination, and a stat it does not know as pending with what was written', async () => {
    const g = await gateway();
    const sent = await Promise.all(['+447700900092', '+447700900093', '+447700900094'].map((to) => g.gateway.submit(submitRequest(to))));
    expect(sent.every((o) => o.kind === 'accepted')).toBe(true);
    const states = await Promise.all(sent.map(async (o) => (await g.receiptFor(o)).state));
    expect(states).toEqual(['REJECTD', 'EXPIRED', 'DELIVRD']);
    await smsc.set({ finalState: 'XYZ' });
    const unknown = await g.gateway.submit(submitRequest('+447700900095'));
    expect(await g.receiptFor(unknown)).toMatchObject({ state: 'ENROUTE', reportedState: 'XYZ' });
  });

  it.each(['deliver_sm', 'data_sm'] as const)('answers ESME_RX_T_APPN to a %s receipt the handler fails on, and the SMSC sends it again', async (pdu) => {
    await smsc.set({ receiptPdu: pdu });
    const g = await gateway();
    let calls = 0;
    g.gateway.onReceipt(async () => {
      calls += 1;
      if (calls === 1) throw new Error('store unavailable');
    });
    await g.gateway.submit(submitRequest('+447700900128'));
    const { receipts, events } = await smsc.waitFor((s) => (s.receipts[0]?.done ? s : undefined), 3_000, 'receipt done');
    expect(receipts[0]?.statuses).toEqual([0x64, 0]);
    expect(events.filter((e) => e.type === `${pdu}_resp`).map((e) => e.status)).toEqual([0x64, 0]);
    expect(calls).toBe(2);
  });
});

describe('receipts as data_sm (SMPP 3.4 §4.7)', () => {
  it.each(['both', 'tlv', 'text'] as const)('reads data_sm receipts (%s), the same as deliver_sm ones, and answers each with data_sm_resp ESME_ROK', async (mode) => {
    await smsc.set({ receiptPdu: 'data_sm', receiptMode: mode });
    const g = await gateway();
    const [delivered, undeliverable] = await Promise.all(['+447700900133', '+447700900091'].map((to) => g.gateway.submit(submitRequest(to))));
    expect(await g.receiptFor(delivered!)).toMatchObject({ smsc: 'default', state: 'DELIVRD' });
    const failed = await g.receiptFor(undeliverable!);
    expect(failed).toMatchObject({ state: 'UNDELIV' });
    // network_error_code only travels in the TLVs; the text's err: otherwise.
    if (mode === 'text') expect(failed.error).toBe('001');
    else expect(failed.networkErrorCode).toEqual({ type: 3, code: 0x22 });
    const state = await smsc.waitFor((s) => (s.receipts.length === 2 && s.receipts.every((r) => r.done) ? s : undefined), 3_000, 'receipts done');
    expect(state.receipts.map((r) => [r.pdu, r.statuses])).toEqual([
      ['data_sm', [0]],
      ['data_sm', [0]],
    ]);
    expect(state.events.filter((e) => e.type === 'data_sm_resp').map((e) => [e.command, e.status])).toEqual([
      ['data_sm_resp', 0],
      ['data_sm_resp', 0],
    ]);
  });

  it('answers a mobile-originated data_sm (not a receipt) with data_sm_resp ESME_ROK, and takes it for no receipt', async () => {
    const g = await gateway();
    const [sent] = await smsc.action('data_sm_mo');
    const resp = await smsc.waitFor((s) => s.events.find((e) => e.type === 'data_sm_resp' && e.seq === sent?.seq), 2_000, 'data_sm_resp');
    expect(resp).toMatchObject({ command: 'data_sm_resp', status: 0 });
    expect(g.receipts).toEqual([]);
    expect(g.gateway.status()[0]).toMatchObject({ bindsUp: 1 });
  });
});

describe('SMSC refusals', () => {
  it('a permanent error for a destination fails with the SMPP status name', async () => {
    await smsc.set({ rejectPrefixes: { '999': 0x0b } });
    const g = await gateway();
    const outcome = await g.gateway.submit(submitRequest('+99912345678'));
    expect(outcome).toEqual({
      kind: 'failed',
      reason: 'smsc_rejected',
      commandStatus: 0x0b,
      statusName: 'ESME_RINVDSTADR',
      smsc: 'default',
    });
  });

  it('ESME_RSYSERR and ESME_RX_T_APPN (a fault on the SMSC side) come back as retry outcomes, not failures', async () => {
    await smsc.set({ rejectPrefixes: { '888': 0x08, '887': 0x64 } });
    const g = await gateway();
    expect(await g.gateway.submit(submitRequest('+88812345678'))).toEqual({ kind: 'retry', reason: 'temporary_error', commandStatus: 0x08, smsc: 'default' });
    expect(await g.gateway.submit(submitRequest('+88712345678'))).toEqual({ kind: 'retry', reason: 'temporary_error', commandStatus: 0x64, smsc: 'default' });
  });

  it('a whole window refused ESME_RTHROTTLED at once is one throttling episode: one back-off step, not ten', async () => {
    const g = await gateway({ reconnectMinMs: 200, reconnectMaxMs: 5000, window: 10 }, { slotWaitMs: 300 });
    await smsc.set({ throttleNext: 10 });
    const refused = await Promise.all(Array.from({ length: 10 }, (_, i) => g.gateway.submit(submitRequest(`+4477009002${String(i).padStart(2, '0')}`))));
    expect(refused.map((r) => r.kind === 'retry' && r.reason)).toEqual(Array(10).fill('throttled'));
    // 200 ms later the bind takes submits again (ten doublings would have parked it for the 5 s cap).
    await new Promise((r) => setTimeout(r, 250));
    expect(await g.gateway.submit(submitRequest('+447700900299'))).toMatchObject({ kind: 'accepted' });
  });

  it('ESME_RTHROTTLED and ESME_RMSGQFUL come back as retry outcomes, and the bind backs off', async () => {
    // Back-off: reconnectMinMs (200) doubling per consecutive answer, capped at reconnectMaxMs (400);
    // a back-off that fits in slotWaitMs (300) is waited out, a longer one bounces the submit.
    const g = await gateway({ reconnectMinMs: 200, reconnectMaxMs: 400 }, { slotWaitMs: 300 });
    await smsc.set({ throttleNext: 2 });
    expect(await g.gateway.submit(submitRequest('+447700900129'))).toEqual({
      kind: 'retry',
      reason: 'throttled',
      commandStatus: 0x58,
      smsc: 'default',
    });
    // Waits out the 200 ms back-off, then reaches the SMSC (throttled again).
    let t = performance.now();
    expect(await g.gateway.submit(submitRequest('+447700900129'))).toMatchObject({ kind: 'retry', reason: 'throttled', commandStatus: 0x58 });
    expect(performance.now() - t).toBeGreaterThanOrEqual(150);
    // Now the back-off is 400 ms, more than slotWaitMs: bounced at once, nothing sent.
    t = performance.now();
    expect(await g.gateway.submit(submitRequest('+447700900129'))).toEqual({ kind: 'retry', reason: 'throttled', smsc: 'default' });
    expect(performance.now() - t).toBeLessThan(300);
    expect((await smsc.state()).submits).toHaveLength(2);
    await new Promise((r) => setTimeout(r, 450));
    await smsc.set({ queueFullNext: 1 });
    expect(await g.gateway.submit(submitRequest('+447700900130'))).toEqual({
      kind: 'retry',
      reason: 'queue_full',
      commandStatus: 0x14,
      smsc: 'default',
    });
    await new Promise((r) => setTimeout(r, 450));
    expect((await g.gateway.submit(submitRequest('+447700900131'))).kind).toBe('accepted');
    expect((await smsc.state()).submits).toHaveLength(4);
  });

  it('returns no_bind quickly when the SMSC refuses binds', async () => {
    await smsc.set({ refuseBinds: true });
    gut = await startGateway([smscEntry(smsc)], { bindWaitMs: 300 });
    await smsc.waitFor((s) => s.events.filter((e) => e.type === 'bind').length >= 2 || undefined, 3_000, 'bind attempts');
    const t = performance.now();
    expect(await gut.gateway.submit(submitRequest('+447700900132'))).toEqual({ kind: 'retry', reason: 'no_bind', smsc: 'default' });
    expect(performance.now() - t).toBeLessThan(1_000);
    expect(gut.gateway.status()).toEqual([{ name: 'default', bindsUp: 0, receiversUp: 0, bindsConfigured: 1, bindsStarted: 1, inFlight: 0, window: 0 }]);
    const binds = (await smsc.state()).events.filter((e) => e.type === 'bind');
    expect(binds.every((b) => b.status === 0x0d)).toBe(true);
  });

  it('wrong password: binds are refused with ESME_RINVPASWD and retried with back-off', async () => {
    gut = await startGateway([smscEntry(smsc, { password: 'wrong' })]);
    const state = await smsc.waitFor((s) => (s.events.filter((e) => e.type === 'bind').length >= 3 ? s : undefined), 3_000, 'binds');
    const binds = state.events.filter((e) => e.type === 'bind');
    expect(binds.every((b) => b.status === 0x0e)).toBe(true);
    // reconnectMinMs 100 doubling, jittered into [d/2, d]: never back to back.
    const gaps = binds.slice(1).map((b, i) => b.at - (binds[i]?.at ?? 0));
    expect(Math.min(...gaps)).toBeGreaterThanOrEqual(40);
  });
});
