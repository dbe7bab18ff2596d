import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Announcement, MediaPlayer, MediaSession, PlayResult, PromptLanguage } from '../media-player.js';
import { DEFAULT_PROMPTS_DIR } from '../prompts.js';
import { checkAnswerStream, continueOrigin, MediaError, parseAnswer, type NegotiatedMedia } from '../sdp.js';
import { connectMediaServer, createMrf, type FsEndpoint, type FsMediaServer, type FsmrfSrf, type FsPlayResult } from './fsmrf-types.js';
import { waitAtMost, withDeadline } from '../../async/time-limit.js';

/**
 * The production media backend (design.md): drachtio-fsmrf drives
 * FreeSWITCH. Per call, an endpoint is created on the least loaded media
 * server (fsmrf INVITEs FreeSWITCH through drachtio-server without SDP;
 * FreeSWITCH's SDP in the 200 becomes our offer to the callee), the
 * callee's answer is given to FreeSWITCH with a re-INVITE (`modify`), the
 * prompts are played by FreeSWITCH (`playback`, or `speak` when TTS is
 * configured) and the endpoint is hung up when the call ends.
 */

export interface FreeswitchServerOptions {
  address: string;
  /** Event socket port (mod_event_socket listen-port). */
  port: number;
  secret: string;
}

export interface FreeswitchMediaPlayerOptions {
  /**
   * The Srf connected to drachtio-server right now (fsmrf INVITEs FreeSWITCH
   * through it), read at each call: a drachtio backend may replace it on reconnect.
   */
  srf: () => FsmrfSrf | undefined;
  servers: readonly FreeswitchServerOptions[];
  /** Where FreeSWITCH's outbound event-socket connections come back to (must be reachable from FreeSWITCH). */
  listenAddress: string;
  /** 0: any free port, one per server. A fixed port only works with one server. */
  listenPort: number;
  /** assets/prompts as FreeSWITCH sees it (its own file system). */
  promptDir?: string;
  /** Speak the announcement with FreeSWITCH TTS (`speak engine|voice|text`) instead of the prompt files. */
  tts?: { engine: string; voice: string };
  /** sofia profile drachtio INVITEs on FreeSWITCH. */
  profile?: string;
  logger: Logger;
  /** Back-off between reconnect attempts to a lost event socket (doubles, jittered). */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Connecting to one event socket, until fsmrf's MediaServer is ready. */
  connectTimeoutMs?: number;
  /** createEndpoint (INVITE to FreeSWITCH + its outbound ESL connection). */
  createTimeoutMs?: number;
  /** Hang-up of an endpoint (FreeSWITCH's BYE) before we BYE the dialog ourselves. */
  destroyTimeoutMs?: number;
  /** The re-INVITE carrying the callee's answer to FreeSWITCH (endpoint.modify): no final response by then → play() fails. */
  modifyTimeoutMs?: number;
}

/** What each announcement item is in TTS text, per language. */
const TTS_WORDS: Record<PromptLanguage, { intro: string; again: string }> = {
  en: { intro: 'Your verification code is:', again: 'Again:' },
  fr: { intro: 'Votre code de vérification est :', again: 'Je répète :' },
  es: { intro: 'Su código de verificación es:', again: 'Repito:' },
  de: { intro: 'Ihr Bestätigungscode lautet:', again: 'Noch einmal:' },
};

/** One media server: its connection, its load, its reconnect loop. */
class ServerLink {
  ms: FsMediaServer | undefined;
  /** Endpoints this process holds on the server (creating or open). */
  active = 0;
  private timer: NodeJS.Timeout | undefined;
  private delayMs: number;
  private stopped = false;
  private connecting: Promise<void> | undefined;

  constructor(
    readonly server: FreeswitchServerOptions,
    private readonly p: {
      connect(server: FreeswitchServerOptions): Promise<FsMediaServer>;
      minMs: number;
      maxMs: number;
      logger: Logger;
    },
  ) {
    this.delayMs = p.minMs;
  }

  get name(): string {
    return `${this.server.address}:${this.server.port}`;
  }

  get ready(): boolean {
    return !!this.ms && this.ms.connected();
  }

  /** Sessions on the server: ours, or FreeSWITCH's own count (all processes) when higher. */
  get load(): number {
    return Math.max(this.active, this.ms?.currentSessions || 0);
  }

  get full(): boolean {
    const max = this.ms?.maxSessions || 0;
    return max > 0 && this.load >= max;
  }

  /** First connection; on failure the reconnect loop keeps trying. */
  start(): Promise<void> {
    this.connecting ??= this.attempt();
    return this.connecting;
  }

  private async attempt(): Promise<void> {
    if (this.stopped) return;
    try {
      const ms = await this.p.connect(this.server);
      if (this.stopped) {
        ms.disconnect();
        return;
      }
      this.ms = ms;
      this.delayMs = this.p.minMs;
      this.p.logger.info({ server: this.name }, 'FreeSWITCH event socket connected');
      ms.on('error', (err: Error) => this.p.logger.debug({ server: this.name, err: err.message }, 'FreeSWITCH event socket error'));
      ms.on('end', () => this.lost(ms));
    } catch (err) {
      this.p.logger.warn({ server: this.name, err: (err as Error).message, retry_ms: this.delayMs }, 'FreeSWITCH event socket unavailable');
      this.schedule();
    } finally {
      this.connecting = undefined;
    }
  }

  private lost(ms: FsMediaServer): void {
    if (this.ms !== ms || this.stopped) return;
    this.ms = undefined;
    this.p.logger.warn({ server: this.name }, 'lost the FreeSWITCH event socket; reconnecting');
    // Calls in progress keep their own outbound connections; only new endpoints need the inbound one.
    ms.removeAllListeners();
    try {
      ms.disconnect();
    } catch {
      // already closed
    }
    this.schedule();
  }

  private schedule(): void {
    if (this.stopped || this.timer) return;
    const delay = Math.round(this.delayMs * (0.8 + Math.random() * 0.4));
    this.delayMs = Math.min(this.delayMs * 2, this.p.maxMs);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.connecting ??= this.attempt();
    }, delay);
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    const ms = this.ms;
    this.ms = undefined;
    if (ms) {
      ms.removeAllListeners();
      try {
        ms.disconnect();
      } catch {
        // already closed
      }
    }
  }
}

export class FreeswitchMediaPlayer implements MediaPlayer {
  private readonly links: ServerLink[];
  private readonly sessions = new Set<FreeswitchMediaSession>();
  private readonly promptDir: string;
  private nextLink = 0;

  constructor(private readonly opts: FreeswitchMediaPlayerOptions) {
    if (opts.servers.length === 0) throw new MediaError('media.freeswitch.servers: at least one FreeSWITCH is needed');
    const mrf = createMrf(opts.srf);
    this.promptDir = opts.promptDir ?? DEFAULT_PROMPTS_DIR;
    this.links = opts.servers.map(
      (server) =>
        new ServerLink(server, {
          connect: (s) =>
            connectMediaServer(mrf, {
              address: s.address,
              port: s.port,
              secret: s.secret,
              listenAddress: opts.listenAddress,
              listenPort: opts.listenPort,
              profile: opts.profile ?? 'drachtio_mrf',
              timeoutMs: opts.connectTimeoutMs ?? 5000,
            }),
          minMs: opts.reconnectMinMs ?? 500,
          maxMs: opts.reconnectMaxMs ?? 30_000,
          logger: opts.logger,
        }),
    );
  }

  /** Connects to every media server; resolves when each has connected or failed once (failures keep retrying). */
  async start(): Promise<void> {
    await Promise.all(this.links.map((l) => l.start()));
  }

  /** True when at least one media server can take a call (readiness probe). */
  get ready(): boolean {
    return this.links.some((l) => l.ready);
  }

  /** Per server: connected, and sessions (ours / FreeSWITCH's). */
  status(): { server: string; ready: boolean; active: number; currentSessions: number; maxSessions: number }[] {
    return this.links.map((l) => ({
      server: l.name,
      ready: l.ready,
      active: l.active,
      currentSessions: l.ms?.currentSessions || 0,
      maxSessions: l.ms?.maxSessions || 0,
    }));
  }

  /** The connected, not full server with the fewest sessions; ties rotate. */
  private pick(): ServerLink | undefined {
    const n = this.links.length;
    let best: ServerLink | undefined;
    for (let i = 0; i < n; i++) {
      const link = this.links[(this.nextLink + i) % n]!;
      if (!link.ready || link.full) continue;
      if (!best || link.load < best.load) best = link;
    }
    this.nextLink = (this.nextLink + 1) % n;
    return best;
  }

  async createSession(logger: Logger): Promise<MediaSession> {
    const link = this.pick();
    const ms = link?.ms;
    if (!link || !ms) throw new MediaError('no FreeSWITCH media server available');
    link.active++;
    let endpoint: FsEndpoint;
    try {
      endpoint = await this.createEndpoint(ms, logger);
    } catch (err) {
      link.active--;
      throw err instanceof MediaError ? err : new MediaError(`FreeSWITCH ${link.name}: ${(err as Error).message}`);
    }
    const offer = endpoint.local.sdp;
    const session = new FreeswitchMediaSession({
      endpoint,
      offer: offer ?? '',
      logger: logger.child({ media_server: link.name, fs_uuid: endpoint.uuid }),
      files: (a) => this.files(a),
      tts: this.opts.tts,
      destroyTimeoutMs: this.opts.destroyTimeoutMs ?? 5000,
      modifyTimeoutMs: this.opts.modifyTimeoutMs ?? 5000,
      closed: () => {
        link.active--;
        this.sessions.delete(session);
      },
    });
    this.sessions.add(session);
    if (!offer) {
      await session.close();
      throw new MediaError(`FreeSWITCH ${link.name} answered without SDP`);
    }
    return session;
  }

  /** createEndpoint with a deadline; an endpoint that turns up after it is released at once. */
  private createEndpoint(ms: FsMediaServer, logger: Logger): Promise<FsEndpoint> {
    const timeoutMs = this.opts.createTimeoutMs ?? 10_000;
    return new Promise<FsEndpoint>((resolve, reject) => {
      let late = false;
      const timer = setTimeout(() => {
        late = true;
        reject(new MediaError(`no FreeSWITCH endpoint within ${timeoutMs} ms`));
      }, timeoutMs);
      ms.createEndpoint().then(
        (ep) => {
          clearTimeout(timer);
          if (!late) return resolve(ep);
          logger.warn({ fs_uuid: ep.uuid }, 'FreeSWITCH endpoint arrived after the deadline; releasing it');
          void ep.destroy().catch(() => undefined);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(err instanceof Error ? err : new Error(String(err)));
        },
      );
    });
  }

  /** The announcement as FreeSWITCH playback files: prompts by path, gaps as silence_stream://. */
  private files(announcement: Announcement): string[] {
    return announcement.items.map((item) =>
      'prompt' in item ? join(this.promptDir, announcement.language, `${item.prompt}.wav`) : `silence_stream://${item.silenceMs}`,
    );
  }

  async stop(): Promise<void> {
    await Promise.all([...this.sessions].map((s) => s.close()));
    for (const l of this.links) l.stop();
  }
}

/** The announcement as one TTS sentence: "Your verification code is: 4. 8. 2. 9. Again: 4. 8. 2. 9." */
export function ttsText(announcement: Announcement): string {
  const words = TTS_WORDS[announcement.language];
  const parts: string[] = [];
  for (const item of announcement.items) {
    if (!('prompt' in item)) continue;
    if (item.prompt === 'intro') parts.push(words.intro);
    else if (item.prompt === 'again') parts.push(words.again);
    else parts.push(`${item.prompt}.`);
  }
  return parts.join(' ');
}

class FreeswitchMediaSession implements MediaSession {
  readonly offer: string;
  private modified: Promise<void> | undefined;
  private playing = false;
  private stopped = false;
  /** FreeSWITCH hung the channel up (or its control connection went away). */
  private gone = false;
  private closing: Promise<void> | undefined;
  /** The SDP the far end has from us last (our offer, then FreeSWITCH's answers and offers we passed on). */
  private sent: string;
  /** FreeSWITCH refused the far end's answer to a re-offer (acceptAgain): the stream no longer matches; play() fails. */
  private failure: MediaError | undefined;
  private readonly waiters = new Set<() => void>();
  private readonly onDestroy = (info?: { reason?: string }): void => {
    this.gone = true;
    this.p.logger.debug({ reason: info?.reason }, 'FreeSWITCH endpoint ended');
    for (const w of this.waiters) w();
  };

  constructor(
    private readonly p: {
      endpoint: FsEndpoint;
      offer: string;
      logger: Logger;
      files(a: Announcement): string[];
      tts: { engine: string; voice: string } | undefined;
      destroyTimeoutMs: number;
      modifyTimeoutMs: number;
      closed(): void;
    },
  ) {
    this.offer = p.offer;
    this.sent = p.offer;
    p.endpoint.on('destroy', this.onDestroy);
  }

  accept(answerSdp: string): NegotiatedMedia {
    if (this.modified) throw new MediaError('accept() called twice');
    const media = parseAnswer(answerSdp);
    // The re-INVITE to FreeSWITCH carries the callee's answer; play() waits for it, but not forever:
    // drachtio-srf's modify() settles only on a final response, and a FreeSWITCH (or a drachtio
    // connection) that never sends one would otherwise hang the call with the callee on the line.
    // The deadline alone does not keep the process alive.
    const ms = this.p.modifyTimeoutMs;
    this.modified = withDeadline(this.p.endpoint.modify(answerSdp), ms, () => new MediaError(`no answer to the re-INVITE within ${ms} ms`), {
      unref: true,
    }).then(() => undefined);
    this.modified.catch(() => undefined);
    return media;
  }

  /**
   * The callee's new offer (its re-INVITE mid-call: media moved, hold): given to FreeSWITCH in a re-INVITE of the
   * endpoint, as its answer was; FreeSWITCH's answer is the callee's. Within modifyTimeoutMs, else a MediaError (488
   * to the callee; the call keeps its media).
   */
  async reoffer(offerSdp: string): Promise<string> {
    if (!this.modified || this.gone) throw new MediaError('a new offer before the call was answered, or after its media ended');
    await this.modified.catch(() => undefined);
    const ms = this.p.modifyTimeoutMs;
    const answer = await withDeadline(this.p.endpoint.modify(offerSdp), ms, () => new MediaError(`no answer to the re-INVITE within ${ms} ms`), { unref: true }).catch(
      (err: Error) => {
        throw err instanceof MediaError ? err : new MediaError(`FreeSWITCH refused the new offer: ${err.message}`);
      },
    );
    if (typeof answer !== 'string' || answer === '') throw new MediaError('FreeSWITCH answered the new offer without SDP');
    this.p.logger.info('new SDP offer from the far end given to FreeSWITCH (re-INVITE)');
    this.sent = answer;
    return answer;
  }

  /**
   * Our offer for the far end's re-INVITE without one (RFC 3261 14.2): FreeSWITCH's SDP for the call as it stands (its
   * last answer, or its first offer), under the o= line the far end knows (RFC 3264 8: the version one up only when
   * something changed). The answer in the ACK goes to FreeSWITCH (acceptAgain).
   */
  offerAgain(): string {
    if (!this.modified || this.gone || this.closing) throw new MediaError('an offer asked for before the call was answered, or after its media ended');
    const current = this.p.endpoint.local.sdp;
    if (!current) throw new MediaError('FreeSWITCH holds no SDP for the call');
    this.sent = continueOrigin(this.sent, current);
    return this.sent;
  }

  /**
   * The far end's answer (in its ACK) to offerAgain()'s offer: given to FreeSWITCH in a re-INVITE of the endpoint, as
   * the first answer was (FreeSWITCH follows it: moved, held, resumed). Throws MediaError at once when it carries no
   * audio stream (the call is ended with BYE); when FreeSWITCH refuses it or does not answer within modifyTimeoutMs,
   * the stream no longer matches the far end's: the playback is broken and play() fails (media_failed, our BYE).
   */
  acceptAgain(answerSdp: string): void {
    if (!this.modified || this.gone || this.closing) throw new MediaError('an answer before the call was answered, or after its media ended');
    checkAnswerStream(answerSdp);
    const ms = this.p.modifyTimeoutMs;
    const ep = this.p.endpoint;
    this.modified = this.modified
      .catch(() => undefined)
      .then(() => withDeadline(ep.modify(answerSdp), ms, () => new MediaError(`no answer to the re-INVITE within ${ms} ms`), { unref: true }))
      .then(
        () => this.p.logger.info('SDP answer in the ACK given to FreeSWITCH (re-INVITE without offer)'),
        (err: Error) => {
          const failure = new MediaError(`FreeSWITCH refused the answer in the ACK: ${err.message}`);
          this.fail(failure);
          throw failure;
        },
      );
    this.modified.catch(() => undefined);
  }

  /** The media no longer follows the far end: a playback under way is broken and play() rejects with `failure`. */
  private fail(failure: MediaError): void {
    if (this.failure || this.gone || this.closing) return;
    this.failure = failure;
    this.p.logger.warn({ err: failure.message }, 'the media no longer follows the far end; ending the announcement');
    if (!this.playing) return;
    this.p.endpoint.api('uuid_break', `${this.p.endpoint.uuid} all`).catch((err: Error) => {
      this.p.logger.debug({ err: err.message }, 'uuid_break failed');
    });
  }

  /** Resolves `work`, or undefined as soon as the endpoint is gone (an ESL reply that never comes must not hang the call). */
  private untilGone<T>(work: Promise<T>): Promise<T | undefined> {
    if (this.gone) return Promise.resolve(undefined);
    return new Promise<T | undefined>((resolve, reject) => {
      const w = (): void => resolve(undefined);
      this.waiters.add(w);
      work.then(resolve, reject).finally(() => this.waiters.delete(w));
    });
  }

  async play(announcement: Announcement): Promise<PlayResult> {
    if (!this.modified) throw new MediaError('play() before the SDP answer was accepted');
    if (this.playing) throw new MediaError('play() while already playing');
    if (this.stopped || this.closing) return { completed: false, packets: 0 };
    this.playing = true;
    try {
      await this.untilGone(this.modified).catch((err: Error) => {
        throw this.failure ?? new MediaError(`FreeSWITCH rejected the answer SDP: ${err.message}`);
      });
      if (this.failure) throw this.failure;
      if (this.stopped || this.gone) return { completed: false, packets: 0 };
      const ep = this.p.endpoint;
      const result = await this.untilGone<{ playbackMilliseconds?: string } | void>(
        this.p.tts
          ? ep.speak({ ttsEngine: this.p.tts.engine, voice: this.p.tts.voice, text: ttsText(announcement) })
          : playback(ep, this.playbackArg(announcement)),
      ).catch((err: Error) => {
        throw new MediaError(`FreeSWITCH playback failed: ${err.message}`);
      });
      if (this.failure) throw this.failure;
      const ms = Number(result ? result.playbackMilliseconds : NaN);
      return { completed: !this.stopped && !this.gone, packets: Number.isFinite(ms) ? Math.round(ms / 20) : 0 };
    } finally {
      this.playing = false;
    }
  }

  /**
   * The argument of one `playback`: a file_string:// list. fsmrf's play([...]) would first
   * execute `set playback_delimiter=!` and only then `playback`: a stop()
   * landing between the two could not break a playback not yet sent.
   */
  private playbackArg(announcement: Announcement): string {
    const files = this.p.files(announcement);
    return files.length === 1 ? files[0]! : `file_string://${files.join('!')}`;
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (!this.playing || this.gone) return;
    // `all` also flushes what is queued behind the current file (uuid_break, mod_commands).
    this.p.endpoint.api('uuid_break', `${this.p.endpoint.uuid} all`).catch((err: Error) => {
      this.p.logger.debug({ err: err.message }, 'uuid_break failed');
    });
  }

  close(): Promise<void> {
    this.stopped = true;
    this.closing ??= this.release();
    return this.closing;
  }

  /**
   * endpoint.destroy() executes `hangup` and waits for FreeSWITCH's BYE,
   * which may never come; and after the control connection dropped it
   * returns at once without any BYE. Either way the dialog is BYEd here.
   */
  private async release(): Promise<void> {
    const ep = this.p.endpoint;
    const dialog = ep.dialog;
    try {
      await waitAtMost(
        ep.destroy().catch((err: Error) => this.p.logger.debug({ err: err.message }, 'endpoint destroy failed')),
        this.p.destroyTimeoutMs,
      );
      if (dialog?.connected) {
        this.p.logger.debug('FreeSWITCH did not hang up; sending BYE');
        await dialog.destroy().catch(() => undefined);
      }
    } finally {
      ep.removeListener('destroy', this.onDestroy);
      for (const w of this.waiters) w();
      this.p.closed();
    }
  }
}

/**
 * mod_dptools `playback`, executed on the endpoint, and its Application-Response read: `FILE PLAYED` (also when a
 * uuid_break cut it short), `FILE NOT FOUND`, or `PLAYBACK ERROR` for any other failure (a file it cannot decode, a
 * codec it cannot transcode to). fsmrf's play() rejects only the second, and would report a prompt that never played
 * as played. Rejects with the response, as play() does with "File Not Found".
 */
async function playback(ep: FsEndpoint, arg: string): Promise<FsPlayResult> {
  const event = await ep.execute('playback', arg);
  const response = event.getHeader('Application-Response');
  if (response !== undefined && response !== 'FILE PLAYED') throw new Error(response === 'FILE NOT FOUND' ? 'File Not Found' : response);
  return { playbackMilliseconds: event.getHeader('variable_playback_ms') };
}
