/**
 * Messages between an EmbeddedMediaPlayer (main thread) and its RTP worker
 * thread (rtp-worker.ts), which owns the UDP sockets and paces the packets.
 */

export interface RtpWorkerData {
  bindHost: string;
  portMin: number;
  portMax: number;
  /**
   * Nice value for this thread (Linux: setpriority on its thread id); below 0
   * needs CAP_SYS_NICE. Undefined: leave the thread at the process's priority.
   */
  nice?: number;
  /**
   * SCHED_FIFO priority (1-99) for this thread (media.rtp.realtimePriority);
   * needs CAP_SYS_NICE, else the thread falls back to `nice`. Undefined: not asked.
   */
  realtimePriority?: number;
  /**
   * One Int32: the count of commands the main thread has posted, raised
   * (and notified) after each postMessage, so the pacer sleeping in
   * Atomics.wait wakes for a new command (rtp-worker.ts, the pacer).
   */
  wake: SharedArrayBuffer;
}

export type ToWorker =
  /** Bind a socket on a free port of the range for session `id`. */
  | { t: 'open'; id: number }
  /**
   * Play `payload` (G.711 bytes, a whole number of 160-byte frames; its
   * buffer is transferred) to address:port as one RTP stream.
   */
  | {
      t: 'play';
      id: number;
      payload: Uint8Array;
      payloadType: number;
      ssrc: number;
      sequence: number;
      timestamp: number;
      address: string;
      port: number;
    }
  /**
   * The far end's new offer (a re-INVITE) in the middle of playback: the stream goes on, from its next packet, to
   * address:port with `payloadType`; `send` false (hold): its packets fall due and are not sent until a new one.
   */
  | { t: 'retarget'; id: number; address: string; port: number; payloadType: number; send: boolean }
  /** Stop the session's playback at once (answered by its `ended`). */
  | { t: 'stop'; id: number }
  /** Stop, close the socket and free the port (answered by `closed`). */
  | { t: 'close'; id: number };

export type FromWorker =
  | { t: 'opened'; id: number; port: number }
  | { t: 'openFailed'; id: number; message: string }
  /** Playback ended (completed, or stopped); counters of this playback. */
  | {
      t: 'ended';
      id: number;
      completed: boolean;
      packets: number;
      lateOver5ms: number;
      /** Of lateOver5ms: already late when the RTP thread's turn began (the host did not run it, or its event loop's round was long). */
      lateOnWake: number;
      maxLateMs: number;
    }
  | { t: 'closed'; id: number }
  /** A socket error (ICMP unreachable and the like): logged, never fatal. */
  | { t: 'socketError'; id: number; message: string }
  /**
   * Sent at start: the process's descriptor table grown to hold a socket for every port of the range
   * (fd-table.ts), so that no bind has to grow it while streams play; or why it could not be.
   */
  | { t: 'fdTable'; id: 0; sockets: number; opened?: number; tableSize?: number; ms?: number; error?: string }
  /**
   * Sent at start for what was asked: a nice value (policy undefined), or
   * SCHED_FIFO (policy 'fifo'; on failure a nice message may follow).
   */
  | {
      t: 'priority';
      id: 0;
      asked: number;
      policy?: 'fifo';
      nice?: number;
      rtPriority?: number;
      tid?: number;
      error?: string;
    };

/** The `ended` of a playback that sent nothing (never started, or its worker is gone). */
export function nothingPlayed(id: number): Extract<FromWorker, { t: 'ended' }> {
  return { t: 'ended', id, completed: false, packets: 0, lateOver5ms: 0, lateOnWake: 0, maxLateMs: 0 };
}
