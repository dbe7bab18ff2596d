import { afterEach, describe, expect, it } from 'vitest';
import type { G711Codec } from '../../src/media/g711.js';
import { PromptLibrary } from '../../src/media/prompts.js';
import type { PromptLanguage } from '../../src/media/media-player.js';
import { http, readEvents, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { decodeStream, findAll, startRtpReceiver, throughCodec, type RtpReceiver } from '../helpers/rtp-receiver.js';
import { findFreePort, startSippUas, type SippUas } from '../helpers/sipp.js';

/**
 * Voice OTP end to end (design.md "Voice OTP, precisely"): the engine (api +
 * voice worker, embedded SIP + RTP) calls a SIPp far end whose SDP answer
 * points the media at an RTP receiver in this test; the receiver decodes what
 * arrived and finds, by exact match against the committed prompt files passed
 * through the negotiated codec, which words were spoken and in what order.
 */
const T1 = 50;
const ANSWER_TIMEOUT_MS = 1500;
const prompts = new PromptLibrary();

let engine: TestEngine | undefined;
let uas: SippUas | undefined;
let rtp: RtpReceiver | undefined;
afterEach(async () => {
  await uas?.stop();
  await engine?.stop();
  await rtp?.close();
  uas = engine = rtp = undefined;
});

interface Run {
  id: string;
  code: string;
  status: string;
  record: Record<string, string>;
  events: Record<string, string>[];
  body: Record<string, unknown>;
  auth: string;
}

async function voiceCall(
  scenario: string,
  opts: {
    codec?: G711Codec;
    phone?: string;
    locale?: string;
    vars?: Record<string, string | number>;
    answers?: boolean;
    deadPrimary?: number;
    rel100?: 'supported' | 'required';
    transport?: 'udp' | 'tcp';
    /** Leave rtp_pt / rtp_codec to the scenario's defaults (PCMU), as an operator running it by hand does. */
    scenarioCodec?: boolean;
    /** verification.languageByCountry: prompts in the destination country's language when there is no locale. */
    byCountry?: boolean;
  } = {},
): Promise<Run> {
  rtp = await startRtpReceiver();
  const codec = opts.codec ?? 'PCMU';
  uas = await startSippUas({
    scenario,
    // Scenarios that never answer declare no media variables (SIPp refuses -set of unknown ones).
    vars:
      opts.answers === false
        ? opts.vars
        : {
            rtp_ip: '127.0.0.1',
            rtp_port: rtp.port,
            ...(opts.scenarioCodec ? {} : { rtp_pt: codec === 'PCMU' ? 0 : 8, rtp_codec: codec }),
            ...(opts.vars ?? {}),
          },
    maxLifetimeMs: 40_000,
    ...(opts.transport ? { transport: opts.transport } : {}),
  });
  engine = await startTestEngine(
    testConfig({
      voice: { answerTimeoutMs: ANSWER_TIMEOUT_MS },
      ...(opts.byCountry ? { verification: { languageByCountry: true } } : {}),
      sip: {
        timers: { t1Ms: T1, t2Ms: 400, t4Ms: 500 },
        // deadPrimary: a first trunk at a port nobody listens on (ICMP unreachable), SIPp the second.
        trunks: [...(opts.deadPrimary ? [{ name: 'dead', uri: `sip:127.0.0.1:${opts.deadPrimary}`, priority: 0 }] : []), { name: 'sipp', uri: uas.uri, priority: 1, ...(opts.rel100 ? { rel100: opts.rel100 } : {}) }],
      },
    }),
  );
  const account = await engine.account({ balance: 1 });
  const created = await http(`${engine.url}/v1/verify`, {
    auth: account.auth,
    body: { phone_number: opts.phone ?? '+447700900123', method: 'voice', code_length: 6, ...(opts.locale ? { locale: opts.locale } : {}) },
  });
  expect(created.status).toBe(201);
  const id = String(created.body.request_id);
  const key = engine.keys.verification(id);
  const code = engine.sealer.open((await engine.redis.hget(key, 'code_enc'))!, `code:${id}`);
  const record = await waitFor(async () => {
    const h = await engine!.redis.hgetall(key);
    return h.outcome && ['delivered', 'failed'].includes(h.status ?? '') ? h : undefined;
  }, 35_000);
  const body = (await http(`${engine.url}/v1/verify/${id}`, { auth: account.auth })).body;
  const events = (await readEvents(engine.redis, engine.keys)).filter((e) => e.request_id === id);
  return { id, code, status: String(body.status), record, events, body, auth: account.auth };
}

/** Methods in order, repeats (retransmissions) once. */
const distinct = (methods: string[]): string[] => methods.filter((m, i) => m !== methods[i - 1]);

/** The words heard, in order, found by exact match of each prompt (through the codec) in the decoded stream. */
function wordsHeard(codec: G711Codec, language: PromptLanguage): string[] {
  const audio = decodeStream(codec, rtp!.packets);
  const found: { at: number; word: string }[] = [];
  for (const word of ['intro', 'again', ...'0123456789']) {
    for (const at of findAll(audio, throughCodec(codec, prompts.get(language, word)))) found.push({ at, word });
  }
  return found.sort((a, b) => a.at - b.at).map((f) => f.word);
}

function expectCleanStream(codec: G711Codec, minPackets = 50): void {
  const packets = [...rtp!.packets].sort((a, b) => a.at - b.at);
  expect(packets.length).toBeGreaterThan(minPackets);
  const first = packets[0]!;
  packets.forEach((p, i) => {
    expect(p.version).toBe(2);
    expect(p.payloadType).toBe(codec === 'PCMU' ? 0 : 8);
    expect(p.ssrc).toBe(first.ssrc);
    expect(p.marker).toBe(i === 0);
    expect(p.payload.length).toBe(160);
    expect(p.sequence).toBe((first.sequence + i) & 0xffff);
    expect(p.timestamp).toBe((first.timestamp + 160 * i) >>> 0);
  });
}

/**
 * The stream went first to `first`, then (after a move) to `second`: one SSRC, numbered on without a gap, enough of
 * it on each side. Returns the packets that reached `second`, in order.
 */
function expectOneStreamMoved(first: RtpReceiver, second: RtpReceiver): RtpReceiver['packets'] {
  const before = [...first.packets].sort((a, b) => a.at - b.at);
  const after = [...second.packets].sort((a, b) => a.at - b.at);
  expect(before.length).toBeGreaterThan(50);
  expect(after.length).toBeGreaterThan(100);
  expect(before.at(-1)!.at).toBeLessThan(after[0]!.at);
  const all = [...before, ...after];
  all.forEach((p, i) => {
    expect(p.ssrc).toBe(before[0]!.ssrc);
    if (i > 0) expect(p.sequence).toBe((all[i - 1]!.sequence + 1) & 0xffff);
  });
  return after;
}

describe('voice OTP against SIPp', () => {
  it('canceled while the INVITE goes unanswered: Timer B later still refunds the call that never reached the network', async () => {
    uas = await startSippUas({ scenario: 'uas-no-response', vars: { hold_ms: 64 * T1 + 1500 }, maxLifetimeMs: 30_000 });
    engine = await startTestEngine(
      testConfig({ voice: { answerTimeoutMs: 20_000 }, sip: { timers: { t1Ms: T1, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] } }),
    );
    const account = await engine.account({ balance: 1 });
    const created = await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900128', method: 'voice' } });
    const id = String(created.body.request_id);
    await uas.waitForMessage((m) => m.direction === 'received' && m.method === 'INVITE', 10_000);
    expect((await http(`${engine.url}/v1/verify/${id}/cancel`, { auth: account.auth, method: 'POST' })).body.status).toBe('canceled');
    const charged = (await engine.accounts.get(account.account_id)).balance;
    expect(charged).toBeLessThan(1);
    await waitFor(async () => (await engine!.redis.hget(engine!.keys.verification(id), 'outcome')) === 'request_ended', 10_000);
    await waitFor(async () => (await engine!.accounts.get(account.account_id)).balance > 0.9999, 5000);
    const shown = await http(`${engine.url}/v1/verify/${id}`, { auth: account.auth });
    expect((shown.body.status_history as { status: string }[]).map((h) => h.status)).toEqual(['sent', 'canceled']);
  });

  it('answered: reads the code twice in English over PCMU, then BYE; the code verifies', async () => {
    const run = await voiceCall('uas-voice-answer');
    expect(run.record.outcome).toBe('played');
    expect(run.status).toBe('delivered');
    expect(run.events.map((e) => e.status)).toEqual(['sent', 'delivered']);
    expect(JSON.parse(run.events[1]!.detail!)).toMatchObject({ sip_status: 200, codec: 'PCMU', language: 'en', trunk: 'sipp' });
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    expect(uas!.requests().map((m) => m.method)).toEqual(['INVITE', 'ACK', 'BYE']);
    expect(uas!.requests('INVITE')[0]!.header('content-type')).toBe('application/sdp');
    expectCleanStream('PCMU');
    expect(wordsHeard('PCMU', 'en')).toEqual(['intro', ...run.code, 'again', ...run.code]);
    const check = await http(`${engine!.url}/v1/verify/check`, { auth: run.auth, body: { request_id: run.id, code: run.code } });
    expect(check.body.status).toBe('verified');
  }, 45_000);

  it.each([
    ['a=inactive', { rtp_dir: 'inactive' }, /a=inactive: the far end takes no audio/],
    ['a=sendonly', { rtp_dir: 'sendonly' }, /a=sendonly: the far end takes no audio/],
    ['c=0.0.0.0', { rtp_ip: '0.0.0.0' }, /address is 0\.0\.0\.0/],
    ['RTP/SAVP (SRTP)', { rtp_proto: 'RTP/SAVP' }, /RTP\/SAVP, and we send plain RTP/],
    ['an IPv6 address to our IPv4 RTP socket', { rtp_ipver: 6, rtp_ip: '::1' }, /IPv6 and our RTP socket is IPv4/],
    // Taken to the RTP thread, a port out of range threw there and ended every call it was playing.
    ['an audio port over 65535', { rtp_port: 70000 }, /audio port 70000 is not a UDP port/],
  ])('answered with %s: nothing could be heard, so BYE at once, media_failed, failed (not delivered)', async (_name, vars, why) => {
    const t0 = Date.now();
    const run = await voiceCall('uas-voice-answer', { vars });
    expect(run.record.outcome).toBe('media_failed');
    expect(run.status).toBe('failed');
    expect(run.events.map((e) => e.status)).toEqual(['sent', 'failed']);
    expect(JSON.parse(run.events[1]!.detail!)).toMatchObject({ reason: 'media_failed' });
    // The log says why, with the call id.
    expect(engine!.logs.find((l) => why.test(l))).toMatch(/"call_id":"[^"]+".*"msg":"unusable SDP answer; hanging up"/);
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    expect(uas!.requests().map((m) => m.method)).toEqual(['INVITE', 'ACK', 'BYE']);
    // Well before an announcement would have ended (about 10 s).
    expect(Date.now() - t0).toBeLessThan(8000);
    expect(rtp!.packets).toHaveLength(0);
  }, 45_000);

  it('route advance: the first trunk unreachable, the call is placed again on the second and the code is read there', async () => {
    const run = await voiceCall('uas-voice-answer', { deadPrimary: await findFreePort() });
    expect(run.record.outcome).toBe('played');
    expect(run.events.map((e) => e.status)).toEqual(['sent', 'delivered']);
    expect(JSON.parse(run.events[1]!.detail!)).toMatchObject({ trunk: 'sipp' });
    expect(wordsHeard('PCMU', 'en')).toEqual(['intro', ...run.code, 'again', ...run.code]);
    const advanced = engine!.logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['msg'] === 'trunk refused the call before it rang; placed again on the next trunk');
    expect(advanced).toEqual([expect.objectContaining({ trunk: 'dead', next_trunk: 'sipp', reason: 'unreachable' })]);
  }, 45_000);

  it('answered with PCMA, locale fr: the French prompts in A-law', async () => {
    const run = await voiceCall('uas-voice-answer', { codec: 'PCMA', locale: 'fr' });
    expect(run.record.outcome).toBe('played');
    expect(JSON.parse(run.events[1]!.detail!)).toMatchObject({ codec: 'PCMA', language: 'fr' });
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    expectCleanStream('PCMA');
    expect(wordsHeard('PCMA', 'fr')).toEqual(['intro', ...run.code, 'again', ...run.code]);
  }, 45_000);

  it('early media (183 with SDP) is ignored; plays only after the 200 (German by destination, verification.languageByCountry)', async () => {
    const sent = performance.now();
    const run = await voiceCall('uas-voice-early-media-then-answer', { phone: '+4915123456789', vars: { answer_ms: 1000 }, byCountry: true });
    expect(run.record.outcome).toBe('played');
    expect(run.status).toBe('delivered');
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    const r183 = uas!.sent().find((m) => m.status === 183)!;
    expect(r183.body).toContain('m=audio');
    // No RTP during the 1 s of early media: the first packet follows the 200 (which came ≥ 1 s after the INVITE).
    const firstAt = Math.min(...rtp!.packets.map((p) => p.at));
    expect(firstAt - sent).toBeGreaterThan(1000);
    expect(JSON.parse(run.events[1]!.detail!)).toMatchObject({ language: 'de' });
    expect(wordsHeard('PCMU', 'de')).toEqual(['intro', ...run.code, 'again', ...run.code]);
  }, 45_000);

  it('rel100: the answer in a reliable 183 and a 200 without SDP (RFC 3262 5): plays to the 183\'s address, then BYE', async () => {
    const run = await voiceCall('uas-voice-100rel-early-answer', { rel100: 'supported', scenarioCodec: true });
    expect(run.record.outcome).toBe('played');
    expect(run.status).toBe('delivered');
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    expect(uas!.sent().find((m) => m.status === 200 && m.header('cseq')?.endsWith('INVITE'))!.body).toBe('');
    expect(distinct(uas!.requests().map((m) => m.method ?? ''))).toEqual(['INVITE', 'PRACK', 'ACK', 'BYE']);
    expectCleanStream('PCMU');
    expect(wordsHeard('PCMU', 'en')).toEqual(['intro', ...run.code, 'again', ...run.code]);
  }, 45_000);

  it('far end hangs up mid-prompt: playback stops at once, 200 to the BYE, still delivered', async () => {
    const run = await voiceCall('uas-voice-hangup-mid-prompt', { vars: { bye_after_ms: 1000 } });
    expect(run.record.outcome).toBe('remote_hangup');
    expect(run.status).toBe('delivered');
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    // The engine answered the BYE and sent no BYE of its own.
    expect(uas!.requests().map((m) => m.method)).toEqual(['INVITE', 'ACK']);
    expect(uas!.received().some((m) => m.status === 200)).toBe(true);
    const count = rtp!.packets.length;
    await new Promise((r) => setTimeout(r, 500));
    expect(rtp!.packets.length).toBe(count);
    // About bye_after_ms of audio, far from the ~12 s announcement.
    const ats = rtp!.packets.map((p) => p.at);
    const span = Math.max(...ats) - Math.min(...ats);
    expect(span).toBeGreaterThan(700);
    expect(span).toBeLessThan(1600);
    // ~1 s at 50 packets/s: the far end may hang up on either side of the 50th.
    expectCleanStream('PCMU', 30);
    // What an operator scrapes: every packet the receiver got counted as sent, both late
    // counters present, and the call's RTP port given back.
    const metric = async (name: string, labels = ''): Promise<number | undefined> => {
      const text = await (await fetch(`${engine!.url}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
      return line === undefined ? undefined : Number(line.split(' ')[1]);
    };
    expect(await waitFor(async () => (await metric('flashverify_rtp_sessions')) === 0)).toBe(true);
    expect(await metric('flashverify_rtp_packets_sent_total')).toBe(rtp!.packets.length);
    for (const when of ['on_wake', 'in_turn']) {
      const late = await metric('flashverify_rtp_packets_late_total', `{when="${when}"}`);
      expect(late).toBeGreaterThanOrEqual(0);
      expect(late).toBeLessThanOrEqual(rtp!.packets.length);
    }
  }, 45_000);

  it('canceled mid-prompt: the engine stops reading and hangs up (BYE) before the code is read again; no failure reported', async () => {
    rtp = await startRtpReceiver();
    uas = await startSippUas({
      scenario: 'uas-voice-answer',
      vars: { rtp_ip: '127.0.0.1', rtp_port: rtp.port, rtp_pt: 0, rtp_codec: 'PCMU' },
      maxLifetimeMs: 40_000,
    });
    engine = await startTestEngine(
      testConfig({
        voice: { answerTimeoutMs: ANSWER_TIMEOUT_MS },
        sip: { timers: { t1Ms: T1, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] },
      }),
    );
    const t = engine;
    const account = await t.account({ balance: 1 });
    const created = await http(`${t.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900123', method: 'voice', code_length: 6 } });
    const id = String(created.body.request_id);
    const key = t.keys.verification(id);
    // Answered: the prompt is playing.
    await waitFor(async () => (await t.redis.hget(key, 'answered_at')) !== null, 10_000);
    const canceled = await http(`${t.url}/v1/verify/${id}/cancel`, { auth: account.auth, method: 'POST' });
    expect([canceled.status, canceled.body.status]).toEqual([200, 'canceled']);
    const record = await waitFor(async () => {
      const h = await t.redis.hgetall(key);
      return h.outcome ? h : undefined;
    }, 10_000);
    // Ended by the request, not played to its end.
    expect(record.outcome).toBe('request_ended');
    expect((await uas.waitForExit(10_000)).code).toBe(0);
    expect(uas.requests().map((m) => m.method)).toEqual(['INVITE', 'ACK', 'BYE']);
    expect(wordsHeard('PCMU', 'en')).not.toContain('again');
    const events = (await readEvents(t.redis, t.keys)).filter((e) => e.request_id === id);
    expect(events.map((e) => e.status)).toEqual(['sent', 'delivered', 'canceled']);
    // It was answered: billed, not refunded.
    expect((await t.accounts.get(account.account_id)).balance).toBeLessThan(1);
  }, 45_000);

  it('in-dialog OPTIONS and re-INVITE mid-prompt are answered (200, the answer to its offer) and playback goes on', async () => {
    const run = await voiceCall('uas-voice-reinvite-mid-prompt');
    expect(run.record.outcome).toBe('played');
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    expect(uas!.requests().map((m) => m.method)).toEqual(['INVITE', 'ACK', 'BYE']);
    const oks = uas!.received().filter((m) => m.status === 200);
    expect(oks.map((m) => m.header('cseq'))).toEqual(['1 OPTIONS', '2 INVITE']);
    // The re-INVITE's answer is an answer to its offer: the call's one codec with telephone-event (not our first offer).
    expect(oks[1]!.body).toMatch(/^m=audio \d+ RTP\/AVP 0 101\r?$/m);
    expectCleanStream('PCMU');
    expect(wordsHeard('PCMU', 'en')).toEqual(['intro', ...run.code, 'again', ...run.code]);
  }, 45_000);

  it('over TCP too: a re-INVITE whose 200 (sent once) is never ACKed ends the call with BYE 64*T1 later', async () => {
    const run = await voiceCall('uas-voice-reinvite-no-ack', { vars: { mid_ms: 1000 }, transport: 'tcp' });
    expect(run.record.outcome).toBe('remote_hangup');
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    expect(uas!.requests().map((m) => m.method)).toEqual(['INVITE', 'ACK', 'BYE']);
    expect(uas!.received().filter((m) => m.status === 200 && m.header('cseq') === '2 INVITE')).toHaveLength(1);
  }, 45_000);

  it('a re-INVITE whose 200 is never ACKed: the 200 is sent again until 64*T1, then the call is ended with BYE (RFC 3261 13.3.1.4), playback stopped', async () => {
    const run = await voiceCall('uas-voice-reinvite-no-ack', { vars: { mid_ms: 1000 } });
    expect(run.record.outcome).toBe('remote_hangup');
    expect(run.status).toBe('delivered');
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    expect(uas!.requests().map((m) => m.method)).toEqual(['INVITE', 'ACK', 'BYE']);
    // Our answer, sent again (UDP) at T1, 2*T1 ... capped at T2, until 64*T1 without its ACK.
    const answers = uas!.received().filter((m) => m.status === 200 && m.header('cseq') === '2 INVITE');
    expect(answers.length).toBeGreaterThanOrEqual(5);
    const count = rtp!.packets.length;
    await new Promise((r) => setTimeout(r, 500));
    expect(rtp!.packets.length).toBe(count);
    // About mid_ms + 64*T1 (3.2 s) of audio, cut short of the ~12 s announcement.
    const ats = rtp!.packets.map((p) => p.at);
    const span = Math.max(...ats) - Math.min(...ats);
    expect(span).toBeGreaterThan(3500);
    expect(span).toBeLessThan(6000);
  }, 45_000);

  it('a re-INVITE without SDP mid-prompt: our 200 offers the call\'s codec, the answer in its ACK moves the stream (RFC 3261 14.2)', async () => {
    const moved = await startRtpReceiver();
    try {
      const run = await voiceCall('uas-voice-reinvite-no-offer', { vars: { rtp2_port: moved.port, mid_ms: 1500 } });
      expect(run.record.outcome).toBe('played');
      expect((await uas!.waitForExit(10_000)).code).toBe(0);
      const offer = uas!.received().find((m) => m.status === 200 && m.header('cseq') === '2 INVITE')!;
      expect(offer.body).toMatch(/^m=audio \d+ RTP\/AVP 0 101\r?$/m);
      expect(Number(/^o=\S+ \d+ (\d+)/m.exec(offer.body)?.[1])).toBe(2);
      expectOneStreamMoved(rtp!, moved);
      const lines = engine!.logs.map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(lines.find((l) => l['msg'] === 'SDP answer in the ACK taken (re-INVITE without offer)')).toMatchObject({ rtp_to: `127.0.0.1:${moved.port}`, moved: true });
    } finally {
      await moved.close();
    }
  }, 45_000);

  it('re-INVITEs mid-prompt move the media, hold it and resume it: each answered (RFC 3264 8), the one stream follows', async () => {
    const moved = await startRtpReceiver();
    try {
      const run = await voiceCall('uas-voice-reinvite-move-hold', { vars: { rtp2_port: moved.port, mid_ms: 1500 } });
      expect(run.record.outcome).toBe('played');
      expect((await uas!.waitForExit(10_000)).code).toBe(0);
      // The answers: the call's codec and telephone-event only; recvonly to the hold; o= version up with each change.
      const answers = uas!.received().filter((m) => m.status === 200 && / INVITE$/.test(m.header('cseq') ?? ''));
      expect(answers.map((m) => m.header('cseq'))).toEqual(['2 INVITE', '3 INVITE', '4 INVITE']);
      for (const a of answers) expect(a.body).toMatch(/^m=audio \d+ RTP\/AVP 0 101\r?$/m);
      expect(answers.map((a) => /a=(sendrecv|recvonly|sendonly|inactive)/.exec(a.body)?.[1])).toEqual(['sendrecv', 'recvonly', 'sendrecv']);
      const versions = [uas!.requests('INVITE')[0]!, ...answers].map((m) => m === uas!.requests('INVITE')[0] ? 1 : Number(/^o=\S+ \d+ (\d+)/m.exec(m.body)?.[1]));
      expect(versions).toEqual([1, 2, 3, 4]);
      // Before the move to the first receiver, after it to the second: one stream, numbered on without a gap.
      const after = expectOneStreamMoved(rtp!, moved);
      // On hold about a second: nothing sent; the time gone by is in the timestamp, and the first packet after is marked.
      const gaps = after.slice(1).map((p, i) => ({ ms: p.at - after[i]!.at, ts: (p.timestamp - after[i]!.timestamp) >>> 0, marker: p.marker }));
      const hold = gaps.reduce((a, b) => (b.ms > a.ms ? b : a));
      expect(hold.ms).toBeGreaterThan(800);
      expect(hold.ts).toBeGreaterThan(8 * 800);
      expect(hold.marker).toBe(true);
      expect(gaps.filter((g) => g.ms > 200)).toHaveLength(1);
      const lines = engine!.logs.map((l) => JSON.parse(l) as Record<string, unknown>);
      // The media side's lines name the call, as the SIP lines do.
      const callId = uas!.requests('INVITE')[0]!.header('call-id');
      expect(lines.filter((l) => l['msg'] === 'far end put the call on hold (re-INVITE): no audio sent until it resumes').map((l) => l['call_id'])).toEqual([callId]);
      expect(lines.find((l) => l['msg'] === 'new SDP offer from the far end taken (re-INVITE)')).toMatchObject({ rtp_to: `127.0.0.1:${moved.port}`, moved: true, call_id: callId });
    } finally {
      await moved.close();
    }
  }, 45_000);

  it('no answer within voice.answerTimeoutMs → CANCEL → failed no_answer, no RTP', async () => {
    const run = await voiceCall('uas-voice-no-answer', { answers: false });
    expect(run.status).toBe('failed');
    expect(run.body.failure_reason).toBe('no_answer');
    expect(run.events.map((e) => e.status)).toEqual(['sent', 'failed']);
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    expect(uas!.requests().map((m) => m.method)).toEqual(['INVITE', 'CANCEL', 'ACK']);
    expect(rtp!.packets.length).toBe(0);
  });

  it('busy (486 after ringing) → failed busy, no RTP', async () => {
    const run = await voiceCall('uas-voice-busy', { answers: false });
    expect(run.status).toBe('failed');
    expect(run.body.failure_reason).toBe('busy');
    expect(JSON.parse(run.events[1]!.detail!)).toMatchObject({ reason: 'busy', sip_status: 486 });
    expect((await uas!.waitForExit(10_000)).code).toBe(0);
    expect(rtp!.packets.length).toBe(0);
  });

  it('rejects an unknown locale, and a locale on a non-voice method', async () => {
    engine = await startTestEngine(testConfig());
    const account = await engine.account();
    const bad = await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900123', method: 'voice', locale: 'it' } });
    expect(bad.status).toBe(400);
    expect(bad.body).toMatchObject({ error: 'invalid_request' });
    const flash = await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900123', locale: 'en' } });
    expect(flash.status).toBe(400);
  });
});
