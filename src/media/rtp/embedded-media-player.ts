import { randomInt } from 'node:crypto';
import type { Socket } from 'node:dgram';
import type { Logger } from 'pino';
import { encode, silenceCode, type G711Codec } from '../g711.js';
import type { Announcement, MediaPlayer, MediaSession, PlayResult } from '../media-player.js';
import { PromptLibrary, SAMPLE_RATE } from '../prompts.js';
import { buildOffer, MediaError, parseAnswer, type NegotiatedMedia } from '../sdp.js';
import { runPaced, type PacingClock } from './pacing.js';
import { RtpPortPool } from './port-pool.js';
import { RtpPacketizer } from './rtp-packetizer.js';

/** 20 ms of 8 kHz audio: one packet (RFC 3551 4.5: G.711 default packetization). */
export const PTIME_MS = 20;
export const SAMPLES_PER_PACKET = (SAMPLE_RATE * PTIME_MS) / 1000;

/** Counters across every session of a player (benchmarks, metrics). */
export interface RtpStats {
  packets: number;
  /** Packets that left more than 5 ms after their due time. */
  lateOver5ms: number;
  maxLateMs: number;
}

export interface EmbeddedMediaPlayerOptions {
  /** Address RTP sockets bind to. */
  bindHost: string;
  /** Address written in the SDP (c=, o=). */
  advertisedHost: string;
  portMin: number;
  portMax: number;
  prompts?: PromptLibrary;
  clock?: PacingClock;
}

/**
 * The embedded media backend: one UDP socket per call from the RTP port
 * range, the announcement G.711-encoded in the negotiated codec and sent as
 * 20 ms RTP packets on a drift-free schedule.
 */
export class EmbeddedMediaPlayer implements MediaPlayer {
  readonly stats: RtpStats = { packets: 0, lateOver5ms: 0, maxLateMs: 0 };
  private readonly pool: RtpPortPool;
  readonly prompts: PromptLibrary;
  private readonly sessions = new Set<EmbeddedMediaSession>();
  private readonly encodedPrompts = new Map<string, Uint8Array>();

  constructor(private readonly opts: EmbeddedMediaPlayerOptions) {
    this.pool = new RtpPortPool(opts.bindHost, opts.portMin, opts.portMax);
    this.prompts = opts.prompts ?? new PromptLibrary();
  }

  async createSession(logger: Logger): Promise<MediaSession> {
    const { socket, port, release } = await this.pool.bind();
    const session = new EmbeddedMediaSession({
      socket,
      port,
      offer: buildOffer({ host: this.opts.advertisedHost, port, sessionId: randomInt(1, 2 ** 47) }),
      encoded: (a, codec) => this.encode(a, codec),
      stats: this.stats,
      clock: this.opts.clock,
      logger,
      onClose: () => {
        release();
        this.sessions.delete(session);
      },
    });
    this.sessions.add(session);
    return session;
  }

  /**
   * G.711 is sample by sample, so encoding each prompt once and concatenating
   * the bytes equals encoding the concatenated PCM, at the cost of a copy:
   * starting hundreds of calls a second stays cheap.
   */
  private encode(announcement: Announcement, codec: G711Codec): Uint8Array {
    const silence = silenceCode(codec);
    const parts = announcement.items.map((item) => {
      if (!('prompt' in item)) return Math.round((item.silenceMs * SAMPLE_RATE) / 1000);
      const key = `${codec}/${announcement.language}/${item.prompt}`;
      let bytes = this.encodedPrompts.get(key);
      if (!bytes) {
        bytes = encode(codec, this.prompts.get(announcement.language, item.prompt));
        this.encodedPrompts.set(key, bytes);
      }
      return bytes;
    });
    const samples = parts.reduce<number>((n, p) => n + (typeof p === 'number' ? p : p.length), 0);
    const out = new Uint8Array(Math.ceil(samples / SAMPLES_PER_PACKET) * SAMPLES_PER_PACKET).fill(silence);
    let at = 0;
    for (const p of parts) {
      if (typeof p === 'number') at += p;
      else {
        out.set(p, at);
        at += p.length;
      }
    }
    return out;
  }

  async stop(): Promise<void> {
    await Promise.all([...this.sessions].map((s) => s.close()));
  }
}

class EmbeddedMediaSession implements MediaSession {
  readonly offer: string;
  private remote: NegotiatedMedia | undefined;
  private stopPlayback: (() => void) | undefined;
  private stopped = false;
  private closed = false;

  constructor(
    private readonly p: {
      socket: Socket;
      port: number;
      offer: string;
      /** The announcement in `codec`, padded with silence to whole packets. */
      encoded(announcement: Announcement, codec: G711Codec): Uint8Array;
      stats: RtpStats;
      clock: PacingClock | undefined;
      logger: Logger;
      onClose(): void;
    },
  ) {
    this.offer = p.offer;
    // ICMP port unreachable and the like surface here; a lost packet is no reason to stop.
    p.socket.on('error', (err) => p.logger.debug({ err: err.message }, 'RTP socket error'));
    // We never read the far end's audio; drain it so the kernel buffer does not fill.
    p.socket.on('message', () => undefined);
  }

  accept(answerSdp: string): NegotiatedMedia {
    this.remote = parseAnswer(answerSdp);
    return this.remote;
  }

  play(announcement: Announcement): Promise<PlayResult> {
    const remote = this.remote;
    if (!remote) return Promise.reject(new MediaError('play() before the SDP answer was accepted'));
    if (this.stopped || this.closed) return Promise.resolve({ completed: false, packets: 0 });
    if (!remote.sendAllowed) {
      this.p.logger.warn('far end answered a=sendonly/inactive: no audio sent');
      return Promise.resolve({ completed: false, packets: 0 });
    }
    const encoded = this.p.encoded(announcement, remote.codec);
    const count = encoded.length / SAMPLES_PER_PACKET;
    const packetizer = new RtpPacketizer({
      payloadType: remote.payloadType,
      ssrc: randomInt(0, 2 ** 32),
      sequence: randomInt(0, 2 ** 16),
      timestamp: randomInt(0, 2 ** 32),
    });
    const { socket } = this.p;
    const stats = this.p.stats;
    let packets = 0;
    return new Promise<PlayResult>((resolve) => {
      this.stopPlayback = runPaced({
        count,
        periodMs: PTIME_MS,
        clock: this.p.clock,
        send: (index, lateMs) => {
          const frame = encoded.subarray(index * SAMPLES_PER_PACKET, (index + 1) * SAMPLES_PER_PACKET);
          socket.send(packetizer.packet(frame, SAMPLES_PER_PACKET), remote.port, remote.address);
          packets++;
          stats.packets++;
          if (lateMs > 5) stats.lateOver5ms++;
          if (lateMs > stats.maxLateMs) stats.maxLateMs = lateMs;
        },
        done: (completed) => {
          this.stopPlayback = undefined;
          resolve({ completed, packets });
        },
      });
    });
  }

  stop(): void {
    this.stopped = true;
    this.stopPlayback?.();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.stop();
    this.closed = true;
    await new Promise<void>((resolve) => this.p.socket.close(() => resolve()));
    this.p.onClose();
  }
}
