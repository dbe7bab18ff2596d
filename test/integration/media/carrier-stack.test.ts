import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_PROMPTS_DIR } from '../../../src/media/prompts.js';
import { FakeDrachtioServer } from '../../fakes/drachtio-server.js';
import { FakeFreeswitch } from '../../fakes/freeswitch-esl.js';
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
    sip.respondTo(FS_SIP_HOST, async (invite) => {
      const ch = await media.answerInvite({
        callId: invite.header('call-id') ?? '',
        userAgent: invite.header('user-agent') ?? '',
        eslOutbound: invite.header('x-esl-outbound') ?? '',
      });
      return { name: 'freeswitch', sipp: '', invite: [{ status: 100 }, { status: 200, sdp: true }], sdpBody: ch.localSdp };
    });
    media.onHangup = (ch) => sip.byeFromNetwork(ch.callId);
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
