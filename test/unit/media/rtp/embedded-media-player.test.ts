import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { getPriority } from 'node:os';
import { afterEach, describe, expect, it } from 'vitest';
import { decode, encode } from '../../../../src/media/g711.js';
import type { Announcement } from '../../../../src/media/media-player.js';
import { PromptLibrary } from '../../../../src/media/prompts.js';
import { EmbeddedMediaPlayer } from '../../../../src/media/rtp/embedded-media-player.js';
import { fdTableSize } from '../../../../src/media/rtp/fd-table.js';
import { MediaError } from '../../../../src/media/sdp.js';
import { decodeStream, findAll, startRtpReceiver, type RtpReceiver } from '../../../helpers/rtp-receiver.js';

/**
 * The embedded player's worker-thread path: sockets bound and packets paced
 * in the RTP worker, commands posted from this thread.
 */
const logger = pino({ level: 'silent' });
const prompts = new PromptLibrary();
let player: EmbeddedMediaPlayer | undefined;
let rtp: RtpReceiver | undefined;
afterEach(async () => {
  await player?.stop();
  await rtp?.close();
  player = rtp = undefined;
});

function answer(port: number, pt = 0): string {
  return `v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio ${port} RTP/AVP ${pt}\r\n`;
}

function expectSequenced(r: RtpReceiver, count: number, pt: number): void {
  const packets = [...r.packets].sort((a, b) => a.at - b.at);
  expect(packets).toHaveLength(count);
  const first = packets[0]!;
  packets.forEach((p, i) => {
    expect(p.version).toBe(2);
    expect(p.payloadType).toBe(pt);
    expect(p.ssrc).toBe(first.ssrc);
    expect(p.marker).toBe(i === 0);
    expect(p.payload.length).toBe(160);
    expect(p.sequence).toBe((first.sequence + i) & 0xffff);
    expect(p.timestamp).toBe((first.timestamp + 160 * i) >>> 0);
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('EmbeddedMediaPlayer (RTP worker thread)', () => {
  it('plays an announcement from the worker: every packet, exactly sequenced, the audio bit-exact', async () => {
    rtp = await startRtpReceiver();
    player = new EmbeddedMediaPlayer({ bindHost: '127.0.0.1', advertisedHost: '127.0.0.1', portMin: 43000, portMax: 43099 });
    const session = await player.createSession(logger);
    expect(session.offer).toMatch(/m=audio 430\d\d RTP\/AVP/);
    session.accept(answer(rtp.port, 8));
    const announcement: Announcement = { language: 'en', items: [{ prompt: '4' }, { silenceMs: 100 }, { prompt: '2' }] };
    const result = await session.play(announcement);
    await sleep(100);
    expect(result.completed).toBe(true);
    expectSequenced(rtp, result.packets, 8);
    const audio = decodeStream('PCMA', rtp.packets);
    const four = decode('PCMA', encode('PCMA', prompts.get('en', '4')));
    const two = decode('PCMA', encode('PCMA', prompts.get('en', '2')));
    expect(findAll(audio, four)).toEqual([0]);
    expect(findAll(audio, two)).toEqual([four.length + 800]);
    expect(player.stats.packets).toBe(result.packets);
    await session.close();
  });

  it('stop() mid-prompt stops the packets at once; what was sent is still exactly sequenced', async () => {
    rtp = await startRtpReceiver();
    player = new EmbeddedMediaPlayer({ bindHost: '127.0.0.1', advertisedHost: '127.0.0.1', portMin: 43100, portMax: 43199 });
    const session = await player.createSession(logger);
    session.accept(answer(rtp.port));
    const playing = session.play({ language: 'en', items: [{ silenceMs: 5000 }] });
    await sleep(300);
    session.stop();
    const result = await playing;
    expect(result.completed).toBe(false);
    // About 15 packets in 300 ms; far fewer than the 250 of the whole announcement.
    expect(result.packets).toBeGreaterThan(5);
    expect(result.packets).toBeLessThan(60);
    await sleep(200);
    expectSequenced(rtp, result.packets, 0);
    session.stop(); // idempotent
    await session.close();
    await session.close();
    expect(await session.play({ language: 'en', items: [{ silenceMs: 100 }] })).toEqual({ completed: false, packets: 0 });
  });

  it('a far end it cannot connect to (a host name that does not resolve, in the answer or in a re-INVITE) ends that playback or holds that stream; the thread and the other calls play on', async () => {
    rtp = await startRtpReceiver();
    const lines: string[] = [];
    player = new EmbeddedMediaPlayer({ bindHost: '127.0.0.1', advertisedHost: '127.0.0.1', portMin: 43500, portMax: 43599 });
    const log = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) });
    // Another call playing meanwhile, to the receiver.
    const other = await player.createSession(logger);
    other.accept(answer(rtp.port));
    const otherPlaying = other.play({ language: 'en', items: [{ silenceMs: 1500 }] });
    // c= a host name (RFC 4566 allows one) that does not resolve: dgram's connect fails, to its callback.
    const lost = await player.createSession(log);
    lost.accept(answer(rtp.port).replace('c=IN IP4 127.0.0.1', 'c=IN IP4 no-such-host.invalid'));
    expect(await lost.play({ language: 'en', items: [{ silenceMs: 500 }] })).toEqual({ completed: false, packets: 0 });
    expect(lines.join('')).toMatch(/"err":"cannot send RTP to no-such-host\.invalid:\d+: .*"msg":"RTP cannot reach the far end"/);
    await lost.close();
    // A re-INVITE moving a playing stream to a name that does not resolve: the stream holds, nothing thrown.
    const moved = await player.createSession(log);
    moved.accept(answer(rtp.port));
    const movedPlaying = moved.play({ language: 'en', items: [{ silenceMs: 600 }] });
    await sleep(100);
    moved.reoffer!(answer(rtp.port + 2).replace('c=IN IP4 127.0.0.1', 'c=IN IP4 no-such-host.invalid'));
    expect((await movedPlaying).completed).toBe(true);
    await moved.close();
    // The thread lived through both: the other call played to its end, and a new one plays.
    const otherResult = await otherPlaying;
    expect(otherResult).toMatchObject({ completed: true, packets: 75 });
    const next = await player.createSession(logger);
    next.accept(answer(rtp.port));
    expect(await next.play({ language: 'en', items: [{ silenceMs: 100 }] })).toMatchObject({ completed: true, packets: 5 });
    await other.close();
    await next.close();
  });

  it('a move that comes while the stream still connects to the answer\'s host name: the whole stream goes to the new address', async () => {
    rtp = await startRtpReceiver();
    const moved = await startRtpReceiver();
    try {
      player = new EmbeddedMediaPlayer({ bindHost: '127.0.0.1', advertisedHost: '127.0.0.1', portMin: 43600, portMax: 43699 });
      const session = await player.createSession(logger);
      // c= a host name: the worker looks it up before its first packet.
      session.accept(answer(rtp.port).replace('c=IN IP4 127.0.0.1', 'c=IN IP4 localhost'));
      const playing = session.play({ language: 'en', items: [{ silenceMs: 400 }] });
      // A re-INVITE moving the media, taken before the lookup ended.
      session.reoffer!(answer(moved.port));
      const result = await playing;
      await sleep(100);
      expect(result).toMatchObject({ completed: true, packets: 20 });
      expect(rtp.packets).toHaveLength(0);
      expectSequenced(moved, 20, 0);
      await session.close();
    } finally {
      await moved.close();
    }
  });

  it('moves that come while a move still connects follow it, the last one wins; a move during a failing lookup saves the stream', async () => {
    rtp = await startRtpReceiver();
    const second = await startRtpReceiver();
    const third = await startRtpReceiver();
    try {
      player = new EmbeddedMediaPlayer({ bindHost: '127.0.0.1', advertisedHost: '127.0.0.1', portMin: 43700, portMax: 43799 });
      const session = await player.createSession(logger);
      session.accept(answer(rtp.port));
      const playing = session.play({ language: 'en', items: [{ silenceMs: 1000 }] });
      await sleep(200);
      // A move to a host name (looked up), then at once another to an address: the stream ends up at the last one.
      session.reoffer!(answer(second.port).replace('c=IN IP4 127.0.0.1', 'c=IN IP4 localhost'));
      session.reoffer!(answer(third.port));
      const result = await playing;
      await sleep(100);
      expect(result.completed).toBe(true);
      expect(third.packets.length).toBeGreaterThan(20);
      expect(rtp.packets.length + second.packets.length + third.packets.length).toBeLessThanOrEqual(50);
      await session.close();

      // The answer names a host that does not resolve; a re-INVITE moves the media to a good address during the lookup.
      const saved = await player.createSession(logger);
      saved.accept(answer(rtp.port).replace('c=IN IP4 127.0.0.1', 'c=IN IP4 no-such-host.invalid'));
      const savedPlaying = saved.play({ language: 'en', items: [{ silenceMs: 200 }] });
      saved.reoffer!(answer(second.port));
      expect(await savedPlaying).toMatchObject({ completed: true, packets: 10 });
      await saved.close();
    } finally {
      await second.close();
      await third.close();
    }
  });

  it('reserves ports in the worker: a full range is a MediaError, a closed session frees its port', async () => {
    player = new EmbeddedMediaPlayer({ bindHost: '127.0.0.1', advertisedHost: '127.0.0.1', portMin: 43200, portMax: 43201 });
    const first = await player.createSession(logger);
    const port = /m=audio (\d+) /.exec(first.offer)?.[1];
    expect(port).toBe('43200');
    await expect(player.createSession(logger)).rejects.toBeInstanceOf(MediaError);
    await first.close();
    const again = await player.createSession(logger);
    expect(again.offer).toContain(`m=audio ${port} `);
  });
});

describe.runIf(process.platform === 'linux')('EmbeddedMediaPlayer: the descriptor table (fd-table.ts)', () => {
  it("grows the process's descriptor table at the RTP thread's start to hold a socket per port of the range, and logs it", async () => {
    const infos: string[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void infos.push(line) });
    // 8,000 ports: 4,000 sockets (even ports only), more than this test process's table holds before.
    player = new EmbeddedMediaPlayer({ bindHost: '127.0.0.1', advertisedHost: '127.0.0.1', portMin: 44000, portMax: 51999, logger: log });
    expect(fdTableSize()).toBeLessThan(4000);
    // The report is posted before any command is handled: it is in by the time the first session is open.
    await (await player.createSession(logger)).close();
    const t = player.fdTable!;
    expect(t.error).toBeUndefined();
    expect(t.sockets).toBe(4000);
    expect(t.tableSize).toBeGreaterThanOrEqual(4000);
    expect(fdTableSize()).toBe(t.tableSize);
    expect(infos.join('')).toContain('descriptor table sized for the RTP port range');
  });
});

describe('EmbeddedMediaPlayer: RTP thread priority (media.rtp.threadNice)', () => {
  it('raises the RTP thread alone (not the process) when permitted, and says why when not', async () => {
    const warnings: string[] = [];
    const infos: string[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void (JSON.parse(line).level >= 40 ? warnings : infos).push(line) });
    const before = getPriority(process.pid);
    player = new EmbeddedMediaPlayer({ bindHost: '127.0.0.1', advertisedHost: '127.0.0.1', portMin: 43300, portMax: 43399, threadNice: -5, logger: log });
    await (await player.createSession(logger)).close();
    for (let i = 0; i < 100 && !player.threadPriority; i++) await sleep(10);
    const p = player.threadPriority!;
    expect(p.asked).toBe(-5);
    // The process (main thread) keeps its priority either way.
    expect(getPriority(process.pid)).toBe(before);
    if (process.platform === 'linux' && process.getuid?.() === 0) {
      expect(p.error).toBeUndefined();
      expect(p.nice).toBe(-5);
      expect(p.tid).not.toBe(process.pid);
      expect(getPriority(p.tid!)).toBe(-5);
      expect(infos.join('')).toContain('RTP thread runs at nice -5');
    } else {
      expect(p.error).toBeTruthy();
      expect(warnings.join('')).toContain('could not set the RTP thread to nice -5');
    }
  });

  it('realtimePriority: the RTP thread alone runs SCHED_FIFO when permitted; else a warning and the nice value applies', async () => {
    const warnings: string[] = [];
    const infos: string[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void (JSON.parse(line).level >= 40 ? warnings : infos).push(line) });
    player = new EmbeddedMediaPlayer({
      bindHost: '127.0.0.1',
      advertisedHost: '127.0.0.1',
      portMin: 43500,
      portMax: 43599,
      threadNice: -5,
      realtimePriority: 7,
      logger: log,
    });
    await (await player.createSession(logger)).close();
    for (let i = 0; i < 300 && !player.threadRealtime; i++) await sleep(10);
    const rt = player.threadRealtime!;
    expect(rt.asked).toBe(7);
    // The process's main thread stays SCHED_OTHER (policy, field 41 of proc(5)'s stat).
    const policyOf = (path: string): number => {
      const stat = readFileSync(path, 'utf8');
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[41 - 3]);
    };
    expect(policyOf(`/proc/${process.pid}/task/${process.pid}/stat`)).toBe(0);
    if (process.platform === 'linux' && process.getuid?.() === 0) {
      expect(rt.error).toBeUndefined();
      expect(rt.rtPriority).toBe(7);
      expect(policyOf(`/proc/${process.pid}/task/${rt.tid}/stat`)).toBe(1); // SCHED_FIFO
      expect(infos.join('')).toContain('RTP thread runs SCHED_FIFO at priority 7');
      expect(player.threadPriority).toBeUndefined(); // no fallback asked
    } else {
      expect(rt.error).toBeTruthy();
      expect(warnings.join('')).toContain('could not set the RTP thread to SCHED_FIFO priority 7');
      for (let i = 0; i < 100 && !player.threadPriority; i++) await sleep(10);
      expect(player.threadPriority?.asked).toBe(-5);
    }
  });

  it('asks nothing when threadNice is left out', async () => {
    player = new EmbeddedMediaPlayer({ bindHost: '127.0.0.1', advertisedHost: '127.0.0.1', portMin: 43400, portMax: 43499 });
    await (await player.createSession(logger)).close();
    await sleep(50);
    expect(player.threadPriority).toBeUndefined();
  });
});
