import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { TrunkConfig } from '../../../src/config/schema.js';
import { placeVoiceCall, type VoiceResult } from '../../../src/engine/voice-call.js';
import { FreeswitchMediaPlayer, type FreeswitchMediaPlayerOptions } from '../../../src/media/freeswitch/freeswitch-media-player.js';
import { DEFAULT_PROMPTS_DIR, codeAnnouncement } from '../../../src/media/prompts.js';
import type { CallDelegate, CallOriginator, OriginateRequest, OutboundCall, PingResult } from '../../../src/sip/call-originator.js';
import { DrachtioLink } from '../../../src/media/freeswitch/drachtio-link.js';
import { startFreeswitchMedia } from '../../../src/media/freeswitch/start-freeswitch-media.js';
import { testConfig } from '../../helpers/engine.js';
import { FakeDrachtioServer, type WireRequest } from '../../fakes/drachtio-server.js';
import { behindDrachtio, FakeFreeswitch } from '../../fakes/freeswitch-esl.js';

/**
 * Voice OTP through the FreeSWITCH backend: drachtio-fsmrf 4.1.2 and
 * drachtio-modesl talk the real event-socket protocol to a fake FreeSWITCH
 * (test/fakes/freeswitch-esl.ts) over loopback, and fsmrf's SIP leg to
 * FreeSWITCH goes through drachtio-srf (DrachtioLink) to the fake
 * drachtio-server on its framed wire protocol (test/fakes/drachtio-server.ts).
 * The callee leg is a scripted CallOriginator driving the real voice policy
 * (src/engine/voice-call.ts); test/integration/media/carrier-stack.test.ts
 * runs the callee leg through drachtio too.
 */

const logger = pino({ level: 'silent' });

const ANSWER_SDP = [
  'v=0',
  'o=callee 1 1 IN IP4 127.0.0.1',
  's=-',
  'c=IN IP4 127.0.0.1',
  't=0 0',
  'm=audio 40000 RTP/AVP 0 101',
  'a=rtpmap:0 PCMU/8000',
  'a=rtpmap:101 telephone-event/8000',
  'a=sendrecv',
  '',
].join('\r\n');

const TRUNK: TrunkConfig = {
  name: 'test',
  uri: 'sip:127.0.0.1:5060',
  cps: 100,
  ringOn183: false,
  dummySdp: false,
  headers: {},
};

type Script = { answerAfterMs?: number; remoteHangupAfterMs?: number };

/** The callee: answers (or not) and hangs up (or not) on a script. */
class ScriptedOriginator implements CallOriginator {
  offers: string[] = [];
  hangups = 0;
  constructor(private readonly script: Script) {}
  async start(): Promise<void> {}
  async stop(): Promise<void> {}
  /** Not used by the call policies. */
  async ping(): Promise<PingResult> {
    return { outcome: 'not_sent', callId: '' };
  }
  originate(req: OriginateRequest, d: CallDelegate): OutboundCall {
    this.offers.push(req.sdp ?? '');
    const timers: NodeJS.Timeout[] = [];
    let cancelled = false;
    if (this.script.answerAfterMs !== undefined) {
      timers.push(
        setTimeout(() => {
          if (cancelled) return;
          d.onAnswered?.(ANSWER_SDP, false);
          if (this.script.remoteHangupAfterMs !== undefined) timers.push(setTimeout(() => d.onRemoteHangup?.(), this.script.remoteHangupAfterMs));
        }, this.script.answerAfterMs),
      );
    }
    return {
      callId: 'callee-1',
      cancel: () => {
        cancelled = true;
        timers.forEach(clearTimeout);
        setImmediate(() => d.onCancelled?.(487));
      },
      hangup: async () => {
        this.hangups++;
        timers.forEach(clearTimeout);
      },
    };
  }
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function startFreeswitch(sipPort: number, opts: Partial<ConstructorParameters<typeof FakeFreeswitch>[0]> = {}): Promise<FakeFreeswitch> {
  const fs = new FakeFreeswitch({ sipAddress: `127.0.0.1:${sipPort}`, ...opts });
  await fs.listen();
  cleanups.push(() => fs.close());
  return fs;
}

/** The SIP leg to FreeSWITCH as seen on drachtio's wire. */
class FsLegs {
  constructor(readonly drachtio: FakeDrachtioServer) {}
  /** fsmrf's INVITEs to FreeSWITCH, oldest first. */
  get invites(): WireRequest[] {
    return this.drachtio.wire('INVITE').filter((r) => r.fromApp && r.uri.startsWith('sip:drachtio@'));
  }
  /** SDPs of the re-INVITEs (endpoint.modify) on the leg of `invite`. */
  modifies(invite: WireRequest): string[] {
    return this.drachtio.reinvites.filter((r) => r.callId === invite.callId).map((r) => r.sdp);
  }
  /** Who ended the leg: our BYE through drachtio ('app'), or FreeSWITCH's BYE answered 200 by drachtio-srf ('freeswitch'). */
  endedBy(invite: WireRequest): 'app' | 'freeswitch' | undefined {
    if (this.drachtio.wire('BYE').some((b) => b.fromApp && b.callId === invite.callId)) return 'app';
    const ok = this.drachtio.appResponses.some((r) => r.status === 200 && r.header('call-id') === invite.callId && /BYE$/.test(r.header('cseq') ?? ''));
    return ok ? 'freeswitch' : undefined;
  }
  /** Waits for the leg of `invite` to be over (a BYE's 200 frame may land just after the session closed). */
  async ended(invite: WireRequest): Promise<'app' | 'freeswitch' | undefined> {
    await until(() => this.endedBy(invite) !== undefined, 'the FreeSWITCH leg to end', 3000).catch(() => undefined);
    return this.endedBy(invite);
  }
}

async function startPlayer(
  servers: FakeFreeswitch[],
  opts: Partial<FreeswitchMediaPlayerOptions> = {},
): Promise<{ player: FreeswitchMediaPlayer; sip: FsLegs }> {
  const drachtio = await FakeDrachtioServer.start({ secret: 'cymru' });
  cleanups.push(() => drachtio.stop());
  for (const fs of servers) behindDrachtio(fs, drachtio);
  const link = new DrachtioLink({
    host: '127.0.0.1',
    port: drachtio.port,
    secret: 'cymru',
    enablePing: true,
    pingIntervalMs: 5000,
    reconnectMinMs: 50,
    reconnectMaxMs: 400,
    logger,
  });
  cleanups.push(() => link.stop());
  await link.start();
  const sip = new FsLegs(drachtio);
  const player = new FreeswitchMediaPlayer({
    srf: () => link.current(),
    servers: servers.map((s) => ({ address: '127.0.0.1', port: s.port, secret: 'ClueCon' })),
    listenAddress: '127.0.0.1',
    listenPort: 0,
    logger,
    reconnectMinMs: 50,
    reconnectMaxMs: 400,
    destroyTimeoutMs: 1000,
    ...opts,
  });
  cleanups.push(() => player.stop());
  await player.start();
  return { player, sip };
}

function call(player: FreeswitchMediaPlayer, script: Script, answerTimeoutMs = 3000): { originator: ScriptedOriginator; result: Promise<VoiceResult> } {
  const originator = new ScriptedOriginator(script);
  const result = placeVoiceCall(originator, player, {
    to: '+447700900123',
    from: '+441908730000',
    trunk: TRUNK,
    announcement: codeAnnouncement('4829', 'en'),
    answerTimeoutMs,
    settleMs: 500,
    logger,
  });
  return { originator, result };
}

async function until(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const prompt = (name: string, dir = DEFAULT_PROMPTS_DIR): string => join(dir, 'en', `${name}.wav`);
const spoken = (files: string[]): string[] => files.filter((f) => !f.startsWith('silence_stream://'));

describe('FreeSWITCH media backend (drachtio-fsmrf over a fake event socket)', () => {
  it('plays intro, the digits, again, the digits on a FreeSWITCH endpoint, then hangs it up', async () => {
    const fs = await startFreeswitch(5080);
    const { player, sip } = await startPlayer([fs]);
    expect(player.ready).toBe(true);

    const { originator, result } = call(player, { answerAfterMs: 20 });
    const r = await result;

    expect(r.outcome).toBe('played');
    expect(r.codec).toBe('PCMU');
    // The INVITE to FreeSWITCH: fsmrf's 3pcc INVITE (no SDP) carrying the outbound-socket address.
    expect(sip.invites).toHaveLength(1);
    const leg = sip.invites[0]!;
    expect(leg.uri).toBe('sip:drachtio@127.0.0.1:5080');
    expect(leg.sip.body).toBe('');
    expect(leg.sip.header('x-esl-outbound')).toMatch(/^127\.0\.0\.1:\d+$/);
    // FreeSWITCH's SDP was the callee's offer; the callee's answer went back to FreeSWITCH in a re-INVITE.
    expect(originator.offers[0]).toContain('m=audio');
    expect(originator.offers[0]).toContain('o=FreeSWITCH');
    expect(sip.modifies(leg)).toEqual([ANSWER_SDP]);
    // One playback, in order, with the gaps as silence streams.
    const files = fs.playbackFiles();
    expect(spoken(files)).toEqual(['intro', '4', '8', '2', '9', 'again', '4', '8', '2', '9'].map((n) => prompt(n)));
    expect(files).toContain('silence_stream://350');
    expect(fs.executed.filter((e) => e.app === 'playback')).toHaveLength(1);
    // Our BYE to the callee, `hangup` on the endpoint, FreeSWITCH's BYE on its leg.
    expect(originator.hangups).toBe(1);
    expect(fs.executed.at(-1)?.app).toBe('hangup');
    expect(fs.hangups).toHaveLength(1);
    expect(await sip.ended(leg)).toBe('freeswitch');
    expect(player.status()[0]!.active).toBe(0);
  });

  it('destroys the endpoint of an unanswered call without ever modifying it', async () => {
    const fs = await startFreeswitch(5080);
    const { player, sip } = await startPlayer([fs]);
    const { result } = call(player, {}, 200);
    const r = await result;
    expect(r.outcome).toBe('no_answer');
    expect(sip.modifies(sip.invites[0]!)).toEqual([]);
    expect(fs.playbackFiles()).toEqual([]);
    expect(fs.hangups).toHaveLength(1);
    expect(await sip.ended(sip.invites[0]!)).toBe('freeswitch');
  });

  it('breaks the playback at once when the callee hangs up mid-prompt, then destroys the endpoint', async () => {
    const fs = await startFreeswitch(5080, { playbackMs: 10_000 });
    const { player, sip } = await startPlayer([fs]);
    const started = Date.now();
    const { originator, result } = call(player, { answerAfterMs: 20, remoteHangupAfterMs: 200 });
    const r = await result;
    expect(r.outcome).toBe('remote_hangup');
    expect(Date.now() - started).toBeLessThan(3000);
    const uuid = fs.executed[0]!.channel;
    expect(fs.apiCommands).toContain(`uuid_break ${uuid} all`);
    expect(fs.breaks).toEqual([uuid]);
    expect(fs.hangups).toEqual([uuid]);
    expect(await sip.ended(sip.invites[0]!)).toBe('freeswitch');
    expect(originator.hangups).toBe(0); // the callee already hung up: no BYE of ours
  });

  it.each([
    ['FILE NOT FOUND', /playback failed: File Not Found/],
    ['PLAYBACK ERROR', /playback failed: PLAYBACK ERROR/],
  ] as const)('hangs up when FreeSWITCH cannot play the prompts (%s)', async (response, reason) => {
    const fs = await startFreeswitch(5080);
    fs.failPlayback = response;
    const { player, sip } = await startPlayer([fs]);

    // Through the MediaPlayer interface: play() rejects with the reason.
    const session = await player.createSession(logger);
    session.accept(ANSWER_SDP);
    await expect(session.play(codeAnnouncement('4829', 'en'))).rejects.toThrow(reason);
    await session.close();
    expect(fs.hangups).toHaveLength(1);
    expect(await sip.ended(sip.invites[0]!)).toBe('freeswitch');

    // Through the voice policy: media_failed with FreeSWITCH's reason, the callee gets our BYE, the endpoint is released.
    const { originator, result } = call(player, { answerAfterMs: 20 });
    const r = await result;
    expect(r).toMatchObject({ outcome: 'media_failed', answered: true });
    expect(r.phrase).toMatch(reason);
    expect(originator.hangups).toBe(1);
    expect(fs.hangups).toHaveLength(2);
    expect(player.status()[0]!.active).toBe(0);
  });

  it('fails the session (no_media_resources) when the INVITE to FreeSWITCH fails, leaving nothing behind', async () => {
    const fs = await startFreeswitch(5080);
    const { player, sip } = await startPlayer([fs]);
    fs.failInvite = 503;
    const { originator, result } = call(player, { answerAfterMs: 20 });
    const r = await result;
    expect(r.outcome).toBe('no_media_resources');
    expect(originator.offers).toEqual([]);
    expect(sip.invites).toHaveLength(1);
    expect(fs.channels.size).toBe(0);
    expect(player.status()[0]!.active).toBe(0);
  });

  it('BYEs FreeSWITCH itself when the endpoint control connection is gone', async () => {
    const fs = await startFreeswitch(5080);
    const { player, sip } = await startPlayer([fs]);
    const session = await player.createSession(logger);
    // FreeSWITCH's outbound socket for this channel drops (no hangup, no BYE from FreeSWITCH).
    for (const s of fs.outboundSockets) s.destroy();
    await new Promise((r) => setTimeout(r, 50));
    await session.close();
    expect(await sip.ended(sip.invites[0]!)).toBe('app');
  });

  it("the channel's event socket drops mid-prompt: media_failed at once, we BYE FreeSWITCH and the callee", async () => {
    const fs = await startFreeswitch(5080, { playbackMs: 10_000 });
    const { player, sip } = await startPlayer([fs]);
    const started = Date.now();
    const { originator, result } = call(player, { answerAfterMs: 20 });
    await until(() => fs.executed.some((e) => e.app === 'playback'), 'the prompt to start');
    // FreeSWITCH's outbound connection for this channel breaks (no hang-up, no BYE from FreeSWITCH).
    for (const s of fs.outboundSockets) s.destroy();
    const r = await result;
    // Not `played`: the callee did not hear the whole code.
    expect(r.outcome).toBe('media_failed');
    expect(r.answered).toBe(true);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(await sip.ended(sip.invites[0]!)).toBe('app');
    expect(originator.hangups).toBe(1);
    expect(player.status()[0]!.active).toBe(0);
  });

  it('the inbound event socket drops mid-prompt: the call in progress keeps its own connection and is played to the end', async () => {
    const fs = await startFreeswitch(5080, { playbackMs: 300 });
    const { player, sip } = await startPlayer([fs]);
    const { result } = call(player, { answerAfterMs: 20 });
    await until(() => fs.executed.some((e) => e.app === 'playback'), 'the prompt to start');
    fs.dropInbound();
    const r = await result;
    expect(r.outcome).toBe('played');
    expect(fs.hangups).toHaveLength(1);
    expect(await sip.ended(sip.invites[0]!)).toBe('freeswitch');
    await until(() => player.ready, 'the reconnect');
  });

  it('reconnects to the event socket after losing it, and keeps taking calls', async () => {
    const fs = await startFreeswitch(5080);
    const { player } = await startPlayer([fs]);
    expect(fs.inboundConnections).toBe(1);
    fs.dropInbound();
    await until(() => !player.ready, 'the loss to be noticed');
    await until(() => player.ready, 'the reconnect');
    expect(fs.inboundConnections).toBe(2);
    // The new connection re-subscribed to HEARTBEAT (modesl's own reconnect would not).
    fs.heartbeat(3);
    await until(() => player.status()[0]!.currentSessions === 3, 'a heartbeat on the new connection');
    const r = await call(player, { answerAfterMs: 20 }).result;
    expect(r.outcome).toBe('played');
  });

  it('connects late to a FreeSWITCH that was down at start, with a bounded back-off', async () => {
    const fs = new FakeFreeswitch({ sipAddress: '127.0.0.1:5080' });
    const port = await fs.listen();
    await fs.close(); // the port is known but nobody listens yet
    const { player } = await startPlayer([], {
      servers: [{ address: '127.0.0.1', port, secret: 'ClueCon' }],
    }).catch(async () => {
      throw new Error('start() must not throw when a media server is down');
    });
    expect(player.ready).toBe(false);
    await new Promise((r) => setTimeout(r, 300));
    await fs.listen(port);
    cleanups.push(() => fs.close());
    await until(() => player.ready, 'the late connection', 3000);
  });

  it('gives each session to the less loaded of two media servers', async () => {
    const a = await startFreeswitch(5080);
    const b = await startFreeswitch(5090);
    const { player, sip } = await startPlayer([a, b]);
    // FreeSWITCH A reports 7 sessions (other workers' calls), B none.
    a.heartbeat(7);
    b.heartbeat(0);
    await until(() => player.status()[0]!.currentSessions === 7, 'heartbeat from A');
    const s1 = await player.createSession(logger);
    expect(sip.invites.at(-1)!.uri).toBe('sip:drachtio@127.0.0.1:5090');
    // Both report nothing now: B holds our open session, so A gets the next one.
    a.heartbeat(0);
    await until(() => player.status()[0]!.currentSessions === 0, 'heartbeat from A');
    const s2 = await player.createSession(logger);
    expect(sip.invites.at(-1)!.uri).toBe('sip:drachtio@127.0.0.1:5080');
    await Promise.all([s1.close(), s2.close()]);
    expect(player.status().map((s) => s.active)).toEqual([0, 0]);
  });

  it('skips a media server that is down', async () => {
    const a = await startFreeswitch(5080);
    const b = await startFreeswitch(5090);
    const { player, sip } = await startPlayer([a, b]);
    await a.close();
    await until(() => !player.status()[0]!.ready, 'A to be seen down');
    const s = await player.createSession(logger);
    expect(sip.invites.at(-1)!.uri).toBe('sip:drachtio@127.0.0.1:5090');
    await s.close();
  });

  it('is not ready with a wrong secret or without the drachtio_mrf profile, and does not crash', async () => {
    const wrong = await startFreeswitch(5080, { password: 'other' });
    const noProfile = await startFreeswitch(5090, { noMrfProfile: true });
    const { player } = await startPlayer([wrong, noProfile]);
    expect(player.ready).toBe(false);
    await expect(player.createSession(logger)).rejects.toThrow(/no FreeSWITCH media server available/);
  });

  it('listenPort taken by another program: not ready, no session, and the process does not crash (fsmrf listens without an error listener)', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise<void>((resolve) => taken.close(() => resolve())));
    const fs = await startFreeswitch(5080);
    const { player } = await startPlayer([fs], { listenPort: (taken.address() as AddressInfo).port });
    expect(player.ready).toBe(false);
    await expect(player.createSession(logger)).rejects.toThrow(/no FreeSWITCH media server available/);
  });

  it('plays from media.freeswitch.promptDir, or speaks through TTS when configured', async () => {
    const fs = await startFreeswitch(5080);
    const { player } = await startPlayer([fs], { promptDir: '/usr/share/flashverify/prompts' });
    await call(player, { answerAfterMs: 20 }).result;
    expect(spoken(fs.playbackFiles())[1]).toBe(prompt('4', '/usr/share/flashverify/prompts'));

    const tts = await startFreeswitch(5090);
    const { player: ttsPlayer } = await startPlayer([tts], { tts: { engine: 'flite', voice: 'kal' } });
    const r = await call(ttsPlayer, { answerAfterMs: 20 }).result;
    expect(r.outcome).toBe('played');
    expect(tts.executed.find((e) => e.app === 'speak')?.arg).toBe('flite|kal|Your verification code is: 4. 8. 2. 9. Again: 4. 8. 2. 9.');
    expect(tts.playbackFiles()).toEqual([]);
  });

  it('a re-INVITE FreeSWITCH never answers does not hang play(): it fails after modifyTimeoutMs, the endpoint is released', async () => {
    const fs = await startFreeswitch(5080);
    fs.reinvite = 'ignore';
    const { player, sip } = await startPlayer([fs], { modifyTimeoutMs: 300 });
    const session = await player.createSession(logger);
    session.accept(ANSWER_SDP);
    const started = Date.now();
    await expect(session.play(codeAnnouncement('4829', 'en'))).rejects.toThrow(/no answer to the re-INVITE within 300 ms/);
    expect(Date.now() - started).toBeLessThan(3000);
    expect(sip.modifies(sip.invites[0]!)).toEqual([ANSWER_SDP]);
    expect(fs.playbackFiles()).toEqual([]);
    await session.close();
    expect(fs.hangups).toHaveLength(1);
    expect(player.status()[0]!.active).toBe(0);
  });
});

describe('startFreeswitchMedia: the drachtio link and the media servers', () => {
  it('is ready only while drachtio-server and a FreeSWITCH are both connected; the drachtio link reconnects after a drop', async () => {
    const drachtio = await FakeDrachtioServer.start({ secret: 'cymru' });
    cleanups.push(() => drachtio.stop());
    const fs = await startFreeswitch(5080);
    behindDrachtio(fs, drachtio);
    const config = testConfig({
      sip: { backend: 'drachtio', drachtio: { host: '127.0.0.1', port: drachtio.port, secret: 'cymru', reconnectMinMs: 50, reconnectMaxMs: 200 } },
      media: {
        backend: 'freeswitch',
        freeswitch: { servers: [{ address: '127.0.0.1', port: fs.port, secret: 'ClueCon' }], listenAddress: '127.0.0.1', listenPort: 0, reconnectMinMs: 50, reconnectMaxMs: 200 },
      },
    } as Parameters<typeof testConfig>[0]);
    const media = await startFreeswitchMedia(config, logger);
    cleanups.push(() => media.stop());
    expect(media.ready).toBe(true);
    expect(drachtio.clientCount).toBe(1);

    // drachtio-server drops the link: not ready (fsmrf could not reach FreeSWITCH), then back by itself.
    drachtio.dropConnections();
    await until(() => !media.ready, 'the drop to be seen');
    await expect(media.player.createSession(logger)).rejects.toThrow(/drachtio-server not connected/);
    await until(() => media.ready, 'the drachtio link to reconnect');
    expect(drachtio.clientCount).toBe(1);
    const r = await call(media.player, { answerAfterMs: 20 }).result;
    expect(r.outcome).toBe('played');

    // FreeSWITCH's event socket goes away: not ready either, while drachtio stays connected.
    await fs.close();
    await until(() => !media.ready, 'the event socket loss to be seen');
    expect(drachtio.clientCount).toBe(1);
  });
});

