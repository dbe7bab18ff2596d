import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_PROMPTS_DIR } from '../../../src/media/prompts.js';
import { FakeDrachtioServer } from '../../fakes/drachtio-server.js';
import { pino } from 'pino';
import type { TrunkConfig } from '../../../src/config/schema.js';
import { placeVoiceCall, type VoiceResult } from '../../../src/engine/voice-call.js';
import { DrachtioLink } from '../../../src/media/freeswitch/drachtio-link.js';
import { FreeswitchMediaPlayer } from '../../../src/media/freeswitch/freeswitch-media-player.js';
import { codeAnnouncement } from '../../../src/media/prompts.js';
import { DrachtioOriginator } from '../../../src/sip/drachtio/drachtio-originator.js';
import { farEndSdp, SCENARIOS, type DrachtioScenario } from '../../fakes/drachtio-scenarios.js';
import { behindDrachtio, FakeFreeswitch } from '../../fakes/freeswitch-esl.js';
import { http, startTestEngine, testConfig, waitFor, type TestEngine } from '../../helpers/engine.js';

/**
 * Voice OTP through the whole carrier stack as production runs it
 * (`sip.backend: drachtio`, `media.backend: freeswitch`): the engine talks
 * drachtio's framed wire protocol to a fake drachtio-server for both SIP legs
 * (the callee's, and drachtio-fsmrf's INVITE to FreeSWITCH), and the event
 * socket protocol to a fake FreeSWITCH. The callee answers; FreeSWITCH is told
 * to play the prompts; both legs are torn down.
 */

const FS_SIP_HOST = '127.0.0.5'; // where `sofia status` says FreeSWITCH's drachtio_mrf profile listens (never dialled for real)
let engine: TestEngine | undefined;
let drachtio: FakeDrachtioServer | undefined;
let fs: FakeFreeswitch | undefined;
afterEach(async () => {
  await engine?.stop();
  await drachtio?.stop();
  await fs?.close();
  engine = drachtio = fs = undefined;
});

describe('voice OTP on drachtio-server + FreeSWITCH (both fakes on their real wire protocols)', () => {
  it('calls through drachtio, plays the code twice on a FreeSWITCH endpoint, and hangs up both legs', async () => {
    drachtio = await FakeDrachtioServer.start({ secret: 'cymru' });
    fs = new FakeFreeswitch({ sipAddress: `${FS_SIP_HOST}:5080` });
    await fs.listen();
    const media = fs;
    const sip = drachtio;
    // The INVITE fsmrf sends to FreeSWITCH through drachtio: FreeSWITCH sets up the channel, dials the
    // X-esl-outbound socket, answers 200 with its SDP; its BYE after `hangup` comes back through drachtio.
    behindDrachtio(media, sip);
    // The callee behind the trunk: rings, answers with PCMU/PCMA.
    sip.scenario = { name: 'answer', sipp: 'uas-voice-answer', invite: [{ status: 100 }, { status: 180, delayMs: 20 }, { status: 200, sdp: true, delayMs: 50 }] };

    engine = await startTestEngine(
      testConfig({
        sip: {
          backend: 'drachtio',
          drachtio: { host: '127.0.0.1', port: sip.port, secret: 'cymru', reconnectMinMs: 100, reconnectMaxMs: 500 },
          trunks: [{ name: 'carrier', uri: 'sip:127.0.0.1:5060' }],
        },
        media: {
          backend: 'freeswitch',
          freeswitch: { servers: [{ address: '127.0.0.1', port: media.port, secret: 'ClueCon' }], listenAddress: '127.0.0.1', listenPort: 0 },
        },
      } as Parameters<typeof testConfig>[0]),
    );
    const t = engine;
    await waitFor(async () => ((await http(`${t.url}/readyz`)).status === 200 ? true : undefined), 5000);
    expect((await http(`${t.url}/readyz`)).body).toMatchObject({ checks: { drachtio: true, freeswitch: true } });

    const account = await t.account({ balance: 1 });
    const created = await http(`${t.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900123', method: 'voice', code_length: 4 } });
    expect(created.status).toBe(201);
    const id = String(created.body.request_id);
    const record = await waitFor(async () => {
      const r = await t.redis.hgetall(t.keys.verification(id));
      return r.outcome ? r : undefined;
    }, 20_000);
    expect([record.status, record.outcome], t.logs.filter((l) => /"level":(40|50)|media|voice/i.test(l)).slice(-15).join('\n')).toEqual(['delivered', 'played']);
    const code = t.sealer.open(record.code_enc!, `code:${id}`);

    // FreeSWITCH played intro, the digits, "again", the digits: the code, twice, in order.
    const spoken = media.playbackFiles().filter((f) => !f.startsWith('silence_stream://'));
    const digits = code.split('').map((d) => join(DEFAULT_PROMPTS_DIR, 'en', `${d}.wav`));
    expect(spoken).toEqual([join(DEFAULT_PROMPTS_DIR, 'en', 'intro.wav'), ...digits, join(DEFAULT_PROMPTS_DIR, 'en', 'again.wav'), ...digits]);

    // On the wire through drachtio: the callee's INVITE carried FreeSWITCH's SDP; its answer went to FreeSWITCH in a re-INVITE.
    const invites = sip.wire('INVITE').filter((r) => r.fromApp);
    const toCallee = invites.find((r) => r.uri.includes('+447700900123'));
    const toFreeswitch = invites.find((r) => r.uri.includes(FS_SIP_HOST));
    expect(toFreeswitch?.sip.header('x-esl-outbound')).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(toCallee?.sip.body).toContain('o=FreeSWITCH');
    expect(sip.reinvites.map((r) => r.callId)).toContain(toFreeswitch?.callId);
    // Both legs torn down: our BYE to the callee, `hangup` on the endpoint and FreeSWITCH's BYE.
    await waitFor(async () => (sip.wire('BYE').some((b) => b.callId === toCallee?.callId) ? true : undefined), 5000);
    await waitFor(async () => (media.hangups.length === 1 ? true : undefined), 5000);
    expect(sip.appResponses.some((r) => r.status === 200 && r.header('call-id') === toFreeswitch?.callId)).toBe(true);
  });
});

/**
 * Every other path of a voice call through the same two fakes, without the
 * engine around it: DrachtioOriginator (callee leg) and DrachtioLink +
 * FreeswitchMediaPlayer (FreeSWITCH leg) each on their own drachtio
 * connection, as startEngine wires them, driving the voice policy. On every
 * path both legs must end: the callee's (BYE, CANCEL, or the far end's BYE)
 * and FreeSWITCH's (`hangup` on the endpoint, FreeSWITCH's BYE).
 */
describe('voice OTP on the carrier stack: failure paths', () => {
  const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });
  const TRUNK: TrunkConfig = { name: 'carrier', uri: 'sip:192.0.2.10:5060', cps: 100, ringOn183: false, dummySdp: false, headers: {} };
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  interface Stack {
    sip: FakeDrachtioServer;
    media: FakeFreeswitch;
    originator: DrachtioOriginator;
    player: FreeswitchMediaPlayer;
    call(answerTimeoutMs?: number): Promise<VoiceResult>;
    /** INVITEs that went to the callee / to FreeSWITCH. */
    calleeInvites(): string[];
    fsInvites(): string[];
  }

  async function stack(callee: DrachtioScenario, fsOpts: { playbackMs?: number } = {}, playerOpts: { modifyTimeoutMs?: number } = {}): Promise<Stack> {
    const sip = await FakeDrachtioServer.start({ secret: 'cymru' });
    cleanups.push(() => sip.stop());
    const media = new FakeFreeswitch({ sipAddress: `${FS_SIP_HOST}:5080`, ...fsOpts });
    await media.listen();
    cleanups.push(() => media.close());
    behindDrachtio(media, sip);
    sip.scenario = callee;
    const connection = { host: '127.0.0.1', port: sip.port, secret: 'cymru', enablePing: true, pingIntervalMs: 5000, reconnectMinMs: 100, reconnectMaxMs: 400, logger };
    const originator = new DrachtioOriginator({ ...connection, callTimeoutMs: 3200, userAgent: 'flashverify-test' });
    cleanups.push(() => originator.stop());
    await originator.start();
    const link = new DrachtioLink(connection);
    cleanups.push(() => link.stop());
    await link.start();
    const player = new FreeswitchMediaPlayer({
      srf: () => link.current(),
      servers: [{ address: '127.0.0.1', port: media.port, secret: 'ClueCon' }],
      listenAddress: '127.0.0.1',
      listenPort: 0,
      logger,
      destroyTimeoutMs: 1000,
      ...playerOpts,
    });
    cleanups.push(() => player.stop());
    await player.start();
    const invites = (fs: boolean): string[] => sip.wire('INVITE').filter((r) => r.fromApp && r.uri.includes(FS_SIP_HOST) === fs).map((r) => r.callId);
    return {
      sip,
      media,
      originator,
      player,
      call: (answerTimeoutMs = 2000) =>
        placeVoiceCall(originator, player, {
          to: '+447700900123',
          from: '+441908730000',
          trunk: TRUNK,
          announcement: codeAnnouncement('4829', 'en'),
          answerTimeoutMs,
          settleMs: 1000,
          logger,
        }),
      calleeInvites: () => invites(false),
      fsInvites: () => invites(true),
    };
  }

  /** FreeSWITCH hung its channel up and its BYE went back through drachtio (answered 200 by drachtio-srf), or we BYEd it. */
  async function freeswitchLegEnded(st: Stack): Promise<void> {
    const [fsCall] = st.fsInvites();
    await waitFor(async () => (st.media.hangups.length === 1 ? true : undefined), 5000);
    await waitFor(
      async () =>
        st.sip.appResponses.some((r) => r.status === 200 && r.header('call-id') === fsCall && /BYE$/.test(r.header('cseq') ?? '')) ||
        st.sip.wire('BYE').some((b) => b.fromApp && b.callId === fsCall)
          ? true
          : undefined,
      5000,
    );
    expect(st.media.channels.size).toBe(0);
    expect(st.player.status()[0]!.active).toBe(0);
    expect(st.originator.activeCalls).toBe(0);
  }

  it('no answer: CANCEL to the callee, the FreeSWITCH endpoint is hung up, nothing played', async () => {
    const st = await stack({ ...SCENARIOS.ringCancel, name: 'rings, never answers' });
    const r = await st.call(400);
    expect(r.outcome).toBe('no_answer');
    const [callee] = st.calleeInvites();
    expect(st.sip.wire().filter((w) => w.callId === callee).map((w) => w.method)).toEqual(['INVITE', 'CANCEL', 'ACK']);
    expect(st.sip.reinvites).toEqual([]);
    expect(st.media.playbackFiles()).toEqual([]);
    await freeswitchLegEnded(st);
  });

  it('the callee re-INVITEs mid-prompt: its offer goes to FreeSWITCH in a re-INVITE, FreeSWITCH\'s answer back to the callee; playback goes on', async () => {
    const st = await stack(SCENARIOS.voiceReinvite, { playbackMs: 600 });
    const r = await st.call();
    expect(r.outcome).toBe('played');
    const [callee] = st.calleeInvites();
    const [fsCall] = st.fsInvites();
    // To FreeSWITCH: first the callee's answer (as ever), then the callee's new offer (its o= version 2).
    const toFs = st.sip.reinvites.filter((x) => x.callId === fsCall).map((x) => x.sdp);
    expect(toFs).toHaveLength(2);
    expect(toFs[1]).toBe(farEndSdp(40_000, 2));
    // To the callee: FreeSWITCH's answer, not the offer our INVITE carried.
    const answer = st.sip.appResponses.find((x) => x.header('call-id') === callee && /INVITE$/.test(x.header('cseq') ?? ''));
    expect(answer?.status).toBe(200);
    expect(answer?.header('content-type')).toBe('application/sdp');
    expect(answer?.body).toContain('o=FreeSWITCH');
    await freeswitchLegEnded(st);
  });

  it('the callee re-INVITEs and FreeSWITCH never answers its re-INVITE: 488 to the callee after modifyTimeoutMs; the call goes on', async () => {
    const st = await stack(SCENARIOS.voiceReinvite, { playbackMs: 1200 }, { modifyTimeoutMs: 400 });
    // The first re-INVITE (the callee's answer) is answered; the second (its new offer) never.
    st.media.reinvite = (nth) => (nth === 2 ? 'ignore' : undefined);
    const r = await st.call();
    expect(r.outcome).toBe('played');
    const [callee] = st.calleeInvites();
    const answer = st.sip.appResponses.find((x) => x.header('call-id') === callee && /INVITE$/.test(x.header('cseq') ?? ''));
    expect(answer?.status).toBe(488);
  });

  it('the callee re-INVITEs without SDP mid-prompt: our 200 offers FreeSWITCH\'s SDP as the callee knows it, the answer in its ACK goes to FreeSWITCH (RFC 3261 14.2)', async () => {
    const ackSdp = 'v=0\r\no=far 1 3 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40100 RTP/AVP 0\r\na=sendrecv\r\n';
    const st = await stack({ ...SCENARIOS.voiceReinvite, reinviteWithoutSdp: { ackSdp } }, { playbackMs: 600 });
    const r = await st.call();
    expect(r.outcome).toBe('played');
    const [callee] = st.calleeInvites();
    const [fsCall] = st.fsInvites();
    // Our offer in the 200: FreeSWITCH's SDP for the call, under the o= line of the SDP the callee had (nothing changed: same version).
    const ok = st.sip.appResponses.find((x) => x.header('call-id') === callee && /INVITE$/.test(x.header('cseq') ?? ''));
    const first = st.sip.wire('INVITE').find((w) => w.callId === callee)!.sip.body;
    expect(ok?.status).toBe(200);
    expect(ok?.header('content-type')).toBe('application/sdp');
    expect(ok?.body).toBe(first);
    expect(ok?.body).toMatch(/^o=FreeSWITCH \d+ \d+ IN IP4 /m);
    // To FreeSWITCH: the callee's first answer, then the answer its ACK carried.
    const toFs = st.sip.reinvites.filter((x) => x.callId === fsCall).map((x) => x.sdp);
    expect(toFs).toEqual([farEndSdp(), ackSdp]);
    await freeswitchLegEnded(st);
  });

  it('FreeSWITCH refuses the answer a re-INVITE without SDP brought in its ACK: the playback is broken, media_failed, our BYE to the callee', async () => {
    const ackSdp = 'v=0\r\no=far 1 3 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40100 RTP/AVP 0\r\na=sendrecv\r\n';
    const st = await stack({ ...SCENARIOS.voiceReinvite, reinviteWithoutSdp: { ackSdp } }, { playbackMs: 10_000 });
    st.media.reinvite = (nth) => (nth === 2 ? { status: 488 } : undefined);
    const started = Date.now();
    const r = await st.call();
    expect(Date.now() - started).toBeLessThan(5000);
    expect(r.outcome).toBe('media_failed');
    expect(r.phrase).toMatch(/FreeSWITCH refused the answer in the ACK/);
    const uuid = st.media.executed.find((e) => e.app === 'playback')!.channel;
    expect(st.media.breaks).toEqual([uuid]);
    const [callee] = st.calleeInvites();
    await st.sip.waitForRequest('BYE', 3000);
    expect(st.sip.wire('BYE').map((b) => b.callId)).toContain(callee);
    await freeswitchLegEnded(st);
  });

  it('far-end BYE mid-prompt: playback broken at once, no BYE of ours to the callee, the endpoint hung up', async () => {
    const st = await stack(SCENARIOS.remoteHangup, { playbackMs: 10_000 });
    const started = Date.now();
    const r = await st.call();
    expect(r.outcome).toBe('remote_hangup');
    expect(Date.now() - started).toBeLessThan(5000);
    const uuid = st.media.executed.find((e) => e.app === 'playback')!.channel;
    expect(st.media.breaks).toEqual([uuid]);
    const [callee] = st.calleeInvites();
    expect(st.sip.wire('BYE').filter((b) => b.callId === callee)).toEqual([]);
    expect(st.sip.appResponses.some((a) => a.status === 200 && a.header('call-id') === callee)).toBe(true);
    await freeswitchLegEnded(st);
  });

  it.each(['FILE NOT FOUND', 'PLAYBACK ERROR'])('FreeSWITCH cannot play the prompts (%s): media_failed, our BYE to the callee, the endpoint hung up', async (response) => {
    const st = await stack(SCENARIOS.voiceAnswer);
    st.media.failPlayback = response;
    const r = await st.call();
    expect(r.answered).toBe(true);
    expect(r.outcome).toBe('media_failed');
    expect(r.packets).toBe(0);
    const [callee] = st.calleeInvites();
    await st.sip.waitForRequest('BYE', 3000);
    expect(st.sip.wire().filter((w) => w.callId === callee).map((w) => w.method)).toEqual(['INVITE', 'ACK', 'BYE']);
    await freeswitchLegEnded(st);
  });

  it('the INVITE to FreeSWITCH fails: no_media_resources, the callee is never called', async () => {
    const st = await stack(SCENARIOS.voiceAnswer);
    st.media.failInvite = 503;
    const r = await st.call();
    expect(r.outcome).toBe('no_media_resources');
    expect(st.fsInvites()).toHaveLength(1);
    expect(st.calleeInvites()).toEqual([]);
    expect(st.media.channels.size).toBe(0);
    expect(st.player.status()[0]!.active).toBe(0);
  });

  it('FreeSWITCH never answers the re-INVITE with the callee SDP: the call ends after modifyTimeoutMs, both legs torn down', async () => {
    const st = await stack(SCENARIOS.voiceAnswer, {}, { modifyTimeoutMs: 300 });
    st.media.reinvite = 'ignore';
    const started = Date.now();
    const r = await st.call();
    expect(Date.now() - started).toBeLessThan(5000);
    expect(r.packets).toBe(0);
    expect(st.media.playbackFiles()).toEqual([]);
    await st.sip.waitForRequest('BYE', 3000);
    expect(st.sip.wire('BYE').map((b) => b.callId)).toContain(st.calleeInvites()[0]);
    await freeswitchLegEnded(st);
  });

  it('the drachtio connection drops mid-prompt: playback stops, the endpoint is hung up, the outcome is not `played`', async () => {
    const st = await stack(SCENARIOS.voiceAnswer, { playbackMs: 10_000 });
    const result = st.call();
    await waitFor(async () => (st.media.executed.some((e) => e.app === 'playback') ? true : undefined), 5000);
    const droppedAt = Date.now();
    st.sip.dropConnections();
    const r = await result;
    expect(Date.now() - droppedAt).toBeLessThan(3000);
    expect(r.answered).toBe(true);
    expect(r.outcome).not.toBe('played');
    expect(r.outcome).toBe('remote_hangup');
    // The prompt was broken on FreeSWITCH and its channel hung up over the event socket (still up).
    expect(st.media.breaks).toHaveLength(1);
    await waitFor(async () => (st.media.hangups.length === 1 ? true : undefined), 5000);
    expect(st.media.channels.size).toBe(0);
    expect(st.player.status()[0]!.active).toBe(0);
    expect(st.originator.activeCalls).toBe(0);
  });
});
