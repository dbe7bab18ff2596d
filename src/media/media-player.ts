import type { Logger } from 'pino';
import type { NegotiatedMedia } from './sdp.js';

/**
 * The one interface every media backend implements (embedded RTP player
 * today, drachtio-fsmrf → FreeSWITCH later). The voice policy only sees this.
 */

/** Languages prompts exist for (assets/prompts/<lang>/). */
export const PROMPT_LANGUAGES = ['en', 'fr', 'es', 'de'] as const;
export type PromptLanguage = (typeof PROMPT_LANGUAGES)[number];

/** One item of an announcement: a named prompt ("intro", "again", "0".."9") or silence. */
export type PromptItem = { prompt: string } | { silenceMs: number };

export interface Announcement {
  language: PromptLanguage;
  items: readonly PromptItem[];
}

export interface PlayResult {
  /** True when the whole announcement went out; false when stop() cut it short. */
  completed: boolean;
  /** Packets (20 ms frames) sent. */
  packets: number;
}

/** The media side of one call. */
export interface MediaSession {
  /** SDP offer for the INVITE. */
  readonly offer: string;
  /** Applies the far end's SDP answer; throws MediaError when nothing usable is in it. */
  accept(answerSdp: string): NegotiatedMedia;
  /**
   * The far end's new SDP offer in the established call (a re-INVITE: its media moved, hold, a refresh): applied to
   * the stream (playing or not) and answered (at once by the embedded player; by FreeSWITCH, after its own
   * re-INVITE). Throws (or rejects) with a MediaError when it cannot be taken (the call keeps its media: 488).
   * Absent: the backend answers re-INVITEs itself.
   */
  reoffer?(offerSdp: string): string | Promise<string>;
  /**
   * Our offer for a re-INVITE that brought none (RFC 3261 14.2): the call's media as it is, in the codec it plays in.
   * Absent: the backend offers the call's last SDP and keeps its media whatever the answer.
   */
  offerAgain?(): string;
  /**
   * The far end's answer (in its ACK) to offerAgain()'s offer: applied to the stream as a new offer's would be (moved,
   * held, resumed). Throws MediaError when it cannot be taken.
   */
  acceptAgain?(answerSdp: string): void;
  /** Plays the announcement to the far end; resolves when it ends or is stopped. */
  play(announcement: Announcement): Promise<PlayResult>;
  /** Stops playback at once (the far end hung up); idempotent. */
  stop(): void;
  /** Releases the session's resources (socket, port); idempotent. */
  close(): Promise<void>;
}

export interface MediaPlayer {
  /** Reserves media resources for one call and prepares the SDP offer. */
  createSession(logger: Logger): Promise<MediaSession>;
  /** Releases everything (worker shutdown). */
  stop(): Promise<void>;
}
