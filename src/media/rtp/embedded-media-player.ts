import { randomInt } from 'node:crypto';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { encode, silenceCode, type G711Codec } from '../g711.js';
import type { Announcement, MediaPlayer, MediaSession, PlayResult } from '../media-player.js';
import { PromptLibrary, SAMPLE_RATE } from '../prompts.js';
import { answerReoffer, buildOffer, MediaError, parseAnswer, parseReanswer, type MediaReach, type NegotiatedMedia } from '../sdp.js';
import { nothingPlayed, type FromWorker, type RtpWorkerData, type ToWorker } from './rtp-worker-protocol.js';

/** 20 ms of 8 kHz audio: one packet (RFC 3551 4.5: G.711 default packetization). */
export const PTIME_MS = 20;
export const SAMPLES_PER_PACKET = (SAMPLE_RATE * PTIME_MS) / 1000;

/** Counters across every session of a player (benchmarks, metrics). */
export interface RtpStats {
  packets: number;
  /** Packets that left more than 5 ms after their due time. */
  lateOver5ms: number;
  /** Of lateOver5ms: already late when the RTP thread's turn began: the host did not run it, or its event loop's round between turns was long. */
  lateOnWake: number;
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
  /** Nice value of the RTP thread (media.rtp.threadNice); undefined leaves it at the process's. */
  threadNice?: number;
  /** SCHED_FIFO priority of the RTP thread (media.rtp.realtimePriority); undefined: not asked. */
  realtimePriority?: number;
  /** Where the RTP thread's start-up (its priority) is reported. */
  logger?: Logger;
}

/**
 * Starts the RTP worker thread. Built (dist/), this module is .js and so is
 * the worker next to it. Under tsx or vitest it is .ts: Node 20 does not
 * apply `--import tsx` to a worker's entry file, so a tiny bootstrap
 * registers tsx's loader in the worker, then imports rtp-worker.ts.
 */
function startRtpWorker(data: RtpWorkerData): Worker {
  // V8's memory reducer runs full mark-compact collections to shrink an idle-looking heap: in
  // the RTP thread (a small, steady heap) they paused sending for 6-34 ms (node --trace-gc,
  // "Mark-Compact (reduce)"), the source of most late packets on a quiet box. The flag is read
  // when an isolate's heap is set up, so it applies to the worker started next (and any later
  // one), not to this thread's existing heap.
  setFlagsFromString('--no-memory-reducer');
  const opts = { workerData: data, name: 'rtp' };
  if (!import.meta.url.endsWith('.ts')) {
    return new Worker(new URL('./rtp-worker.js', import.meta.url), opts);
  }
  const entry = new URL('./rtp-worker.ts', import.meta.url).href;
  // tsx/esm/api resolves to its CommonJS build through require(); its ESM build sits next to it.
  const api = pathToFileURL(createRequire(import.meta.url).resolve('tsx/esm/api').replace(/\.cjs$/, '.mjs')).href;
  const bootstrap = `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(entry)}); });`;
  return new Worker(bootstrap, { eval: true, ...opts });
}

interface WorkerSessionHandlers {
  opened(port: number): void;
  openFailed(message: string): void;
  ended(m: Extract<FromWorker, { t: 'ended' }>): void;
  closed(): void;
  socketError(message: string): void;
}

/**
 * The embedded media backend: one UDP socket per call from the RTP port
 * range, the announcement G.711-encoded in the negotiated codec and sent as
 * 20 ms RTP packets on a drift-free schedule. Sockets and pacing live in one
 * worker thread per player (rtp-worker.ts), so the main event loop's lag
 * (signalling, HTTP, GC) does not delay packets; this thread encodes the
 * announcement, posts play/stop/close commands and gets `ended` back.
 */
export class EmbeddedMediaPlayer implements MediaPlayer {
  readonly stats: RtpStats = { packets: 0, lateOver5ms: 0, lateOnWake: 0, maxLateMs: 0 };
  readonly prompts: PromptLibrary;
  private readonly sessions = new Set<EmbeddedMediaSession>();
  private readonly encodedPrompts = new Map<string, Uint8Array>();
  private worker: Worker | undefined;
  /** Commands posted to the worker, counted for its pacer (RtpWorkerData.wake). */
  private wake = new Int32Array(new SharedArrayBuffer(4));
  private workerFailure: string | undefined;
  private readonly handlers = new Map<number, WorkerSessionHandlers>();
  private nextId = 1;

  constructor(private readonly opts: EmbeddedMediaPlayerOptions) {
    this.prompts = opts.prompts ?? new PromptLibrary();
  }

  /**
   * The worker, started on first use; it keeps the process alive only while sessions are open. One that failed (its
   * calls then ended `media_failed`) is started again for the next call, not left failed until a restart.
   */
  private rtpWorker(): Worker {
    if (this.worker) return this.worker;
    if (this.workerFailure !== undefined) {
      this.opts.logger?.warn({ err: this.workerFailure }, 'starting the RTP thread again after it failed');
      this.workerFailure = undefined;
    }
    this.wake = new Int32Array(new SharedArrayBuffer(4));
    const worker = startRtpWorker({
      wake: this.wake.buffer as SharedArrayBuffer,
      bindHost: this.opts.bindHost,
      portMin: this.opts.portMin,
      portMax: this.opts.portMax,
      nice: this.opts.threadNice,
      realtimePriority: this.opts.realtimePriority,
    });
    worker.unref();
    worker.on('message', (m: FromWorker) => {
      if (m.t === 'priority') return this.reportPriority(m);
      if (m.t === 'fdTable') return this.reportFdTable(m);
      const h = this.handlers.get(m.id);
      if (!h) return;
      switch (m.t) {
        case 'opened':
          return h.opened(m.port);
        case 'openFailed':
          return h.openFailed(m.message);
        case 'ended':
          return h.ended(m);
        case 'closed':
          return h.closed();
        case 'socketError':
          return h.socketError(m.message);
      }
    });
    const fail = (reason: string): void => {
      if (this.worker !== worker) return;
      this.worker = undefined;
      this.workerFailure = reason;
      this.opts.logger?.error({ err: reason, sessions: this.handlers.size }, 'RTP thread failed: its calls end media_failed; the next call starts it again');
      // Every pending open/play/close settles: nothing will answer them any more.
      for (const h of [...this.handlers.values()]) {
        h.openFailed(reason);
        h.ended(nothingPlayed(0));
        h.closed();
      }
    };
    worker.on('error', (err) => fail(err.message));
    worker.on('exit', (code) => fail(`exited with code ${code}`));
    this.worker = worker;
    return worker;
  }

  /** Sessions holding an RTP port (created, not yet closed). */
  get activeSessions(): number {
    return this.sessions.size;
  }

  /** What the RTP thread's nice value became (see rtp-worker.ts applyPriority). */
  threadPriority: Extract<FromWorker, { t: 'priority' }> | undefined;
  /** What asking for SCHED_FIFO gave (see rtp-worker.ts applyRealtime). */
  threadRealtime: Extract<FromWorker, { t: 'priority' }> | undefined;

  /** The descriptor table the RTP thread grew at its start (rtp-worker.ts, fd-table.ts); undefined before. */
  fdTable: Extract<FromWorker, { t: 'fdTable' }> | undefined;

  private reportFdTable(m: Extract<FromWorker, { t: 'fdTable' }>): void {
    this.fdTable = m;
    const log = this.opts.logger;
    if (m.error !== undefined) {
      log?.warn({ sockets: m.sockets, err: m.error }, `could not make room for ${m.sockets} RTP sockets in the descriptor table (${m.error}); a bind that grows it stalls every stream for a few ms`);
    } else if (m.tableSize !== undefined) {
      log?.info({ sockets: m.sockets, fd_table_size: m.tableSize, opened: m.opened, ms: Math.round(m.ms ?? 0) }, `descriptor table sized for the RTP port range (${m.tableSize} slots)`);
    }
  }

  private reportPriority(m: Extract<FromWorker, { t: 'priority' }>): void {
    const log = this.opts.logger;
    if (m.policy === 'fifo') {
      this.threadRealtime = m;
      if (m.error === undefined) {
        log?.info({ policy: 'SCHED_FIFO', priority: m.rtPriority, tid: m.tid }, `RTP thread runs SCHED_FIFO at priority ${m.rtPriority}`);
      } else {
        const fallback = this.opts.threadNice === undefined ? "the process's priority" : `nice ${this.opts.threadNice}`;
        log?.warn(
          { asked: m.asked, err: m.error },
          `could not set the RTP thread to SCHED_FIFO priority ${m.asked} (${m.error}); it falls back to ${fallback} (needs CAP_SYS_NICE and chrt from util-linux; set media.rtp.realtimePriority: null to not ask)`,
        );
      }
      return;
    }
    this.threadPriority = m;
    if (m.error === undefined) {
      log?.info({ nice: m.nice, tid: m.tid }, `RTP thread runs at nice ${m.nice}`);
    } else {
      log?.warn(
        { asked: m.asked, err: m.error },
        `could not set the RTP thread to nice ${m.asked} (${m.error}); it runs at the process's priority, and RTP packets may leave late on a busy host (needs CAP_SYS_NICE; set media.rtp.threadNice: null to not ask)`,
      );
    }
  }

  /** Posts a command, then counts it and wakes the worker's pacer if it sleeps (rtp-worker.ts). */
  private post(m: ToWorker, transfer?: ArrayBuffer[]): void {
    if (!this.worker) return;
    this.worker.postMessage(m, transfer);
    Atomics.add(this.wake, 0, 1);
    Atomics.notify(this.wake, 0);
  }

  private register(id: number, h: WorkerSessionHandlers): void {
    this.handlers.set(id, h);
    if (this.handlers.size === 1) this.worker?.ref();
  }

  private unregister(id: number): void {
    this.handlers.delete(id);
    if (this.handlers.size === 0) this.worker?.unref();
  }

  async createSession(logger: Logger): Promise<MediaSession> {
    this.rtpWorker();
    const id = this.nextId++;
    let onEnded: ((m: Extract<FromWorker, { t: 'ended' }>) => void) | undefined;
    let onClosed: (() => void) | undefined;
    const port = await new Promise<number>((resolve, reject) => {
      this.register(id, {
        opened: resolve,
        openFailed: (message) => reject(new MediaError(message)),
        ended: (m) => onEnded?.(m),
        closed: () => onClosed?.(),
        // ICMP port unreachable and the like surface here; a lost packet is no reason to stop. A far end the socket
        // cannot send to at all (its connect failed, a send threw) ends the playback: said at warn.
        socketError: (message) =>
          /^(cannot send RTP|RTP send failed)/.test(message) ? logger.warn({ err: message }, 'RTP cannot reach the far end') : logger.debug({ err: message }, 'RTP socket error'),
      });
      this.post({ t: 'open', id });
    }).catch((err: unknown) => {
      this.unregister(id);
      throw err;
    });
    const sessionId = randomInt(1, 2 ** 47);
    const session: EmbeddedMediaSession = new EmbeddedMediaSession({
      offer: buildOffer({ host: this.opts.advertisedHost, port, sessionId }),
      local: { host: this.opts.advertisedHost, port, sessionId },
      // The socket's family (port-pool.ts binds udp6 for an IPv6 bindHost): an answer at the other family's address is refused.
      reach: { family: this.opts.bindHost.includes(':') ? 6 : 4 },
      retarget: (m) => this.post(m),
      encoded: (a, codec) => this.encode(a, codec),
      logger,
      play: (m) => {
        if (!this.worker) return Promise.resolve({ completed: false, packets: 0 });
        this.post(m, [m.payload.buffer as ArrayBuffer]);
        return new Promise<PlayResult>((resolve) => {
          onEnded = (e) => {
            onEnded = undefined;
            this.stats.packets += e.packets;
            this.stats.lateOver5ms += e.lateOver5ms;
            this.stats.lateOnWake += e.lateOnWake;
            if (e.maxLateMs > this.stats.maxLateMs) this.stats.maxLateMs = e.maxLateMs;
            resolve({ completed: e.completed, packets: e.packets });
          };
        });
      },
      stop: () => this.post({ t: 'stop', id }),
      close: () =>
        new Promise<void>((resolve) => {
          onClosed = () => {
            onClosed = undefined;
            this.unregister(id);
            this.sessions.delete(session);
            resolve();
          };
          if (this.worker) this.post({ t: 'close', id });
          else onClosed();
        }),
      id,
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
    const worker = this.worker;
    this.worker = undefined;
    await worker?.terminate();
  }
}

class EmbeddedMediaSession implements MediaSession {
  readonly offer: string;
  private remote: NegotiatedMedia | undefined;
  private playing = false;
  private stopped = false;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly p: {
      id: number;
      offer: string;
      /** Our side of the SDP: the o= line's session id (version 1 is the offer's), the media address and port. */
      local: { host: string; port: number; sessionId: number };
      /** What our RTP socket can send to (sdp.ts MediaReach). */
      reach: MediaReach;
      retarget(m: Extract<ToWorker, { t: 'retarget' }>): void;
      /** The announcement in `codec`, padded with silence to whole packets (a fresh buffer: it is transferred). */
      encoded(announcement: Announcement, codec: G711Codec): Uint8Array;
      logger: Logger;
      /** Posts the play command; resolves on the worker's `ended`. */
      play(m: Extract<ToWorker, { t: 'play' }>): Promise<PlayResult>;
      stop(): void;
      close(): Promise<void>;
    },
  ) {
    this.offer = p.offer;
    this.lastSdp = p.offer.replace(/^o=.*$/m, '');
  }

  accept(answerSdp: string): NegotiatedMedia {
    this.remote = parseAnswer(answerSdp, this.p.reach);
    return this.remote;
  }

  /** The o= version of the SDP we last sent (the offer is 1), and that SDP without its o= line. */
  private sdpVersion = 1;
  private lastSdp: string;

  reoffer(offerSdp: string): string {
    const remote = this.remote;
    if (!remote) throw new MediaError('a new offer before the call was answered');
    const build = (version: number) => answerReoffer(offerSdp, { ...this.p.local, sessionVersion: version, codec: remote.codec }, this.p.reach);
    let { media, answer } = build(this.sdpVersion);
    // RFC 3264 8: the version goes up when what we send changes, and only then (a refresh keeps it).
    const body = answer.replace(/^o=.*$/m, '');
    if (body !== this.lastSdp) ({ media, answer } = build(++this.sdpVersion));
    this.lastSdp = body;
    this.follow(media, media.sendAllowed ? 'new SDP offer from the far end taken (re-INVITE)' : 'far end put the call on hold (re-INVITE): no audio sent until it resumes');
    return answer;
  }

  /** The stream follows the far end's new media (moved, held, resumed), logged with `message`. */
  private follow(media: NegotiatedMedia, message: string): void {
    const remote = this.remote!;
    const moved = media.address !== remote.address || media.port !== remote.port;
    this.p.logger.info({ rtp_to: `${media.address}:${media.port}`, moved, send: media.sendAllowed, payload_type: media.payloadType }, message);
    this.remote = media;
    this.p.retarget({ t: 'retarget', id: this.p.id, address: media.address, port: media.port, payloadType: media.payloadType, send: media.sendAllowed });
  }

  offerAgain(): string {
    const remote = this.remote;
    if (!remote) throw new MediaError('an offer asked for before the call was answered');
    const { host, port, sessionId } = this.p.local;
    const build = (version: number) => buildOffer({ host, port, sessionId, sessionVersion: version, codecs: [remote.codec] });
    let offer = build(this.sdpVersion);
    // RFC 3264 8: the version goes up when what we send changes, and only then.
    const body = offer.replace(/^o=.*$/m, '');
    if (body !== this.lastSdp) offer = build(++this.sdpVersion);
    this.lastSdp = body;
    return offer;
  }

  acceptAgain(answerSdp: string): void {
    const remote = this.remote;
    if (!remote) throw new MediaError('an answer before the call was answered');
    const media = parseReanswer(answerSdp, remote.codec, this.p.reach);
    this.follow(media, media.sendAllowed ? 'SDP answer in the ACK taken (re-INVITE without offer)' : 'far end put the call on hold (answer in the ACK): no audio sent until it resumes');
  }

  async play(announcement: Announcement): Promise<PlayResult> {
    const remote = this.remote;
    if (!remote) throw new MediaError('play() before the SDP answer was accepted');
    if (this.stopped || this.closing) return { completed: false, packets: 0 };
    // A hold taken from a re-INVITE before this (remote.sendAllowed false) holds the stream in the worker from its
    // start, as one during it: the announcement's time goes on, its packets are not sent until the call resumes.
    if (this.playing) throw new MediaError('play() while already playing');
    this.playing = true;
    try {
      return await this.p.play({
        t: 'play',
        id: this.p.id,
        payload: this.p.encoded(announcement, remote.codec),
        payloadType: remote.payloadType,
        ssrc: randomInt(0, 2 ** 32),
        sequence: randomInt(0, 2 ** 16),
        timestamp: randomInt(0, 2 ** 32),
        address: remote.address,
        port: remote.port,
      });
    } finally {
      this.playing = false;
    }
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.playing) this.p.stop();
  }

  close(): Promise<void> {
    this.stopped = true;
    this.closing ??= this.p.close();
    return this.closing;
  }
}
