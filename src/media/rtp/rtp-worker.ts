/**
 * The RTP worker thread of an EmbeddedMediaPlayer: owns every call's UDP
 * socket (dgram sockets cannot be transferred between threads, so they are
 * bound here from the port range) and sends the packets on the drift-free
 * schedule of pacing.ts. Its event loop does nothing else, so packets are not
 * delayed by the main thread's work (SIP, HTTP, Redis, GC of the main heap).
 *
 * Each playback's packets are built once when it starts (one buffer of
 * count × 172 bytes, headers written up front) and the socket is connected
 * to the far end, so sending a packet allocates nothing but a view and does
 * no address lookup. One pacer loop (below) paces every stream of the thread.
 */
import type { Socket } from 'node:dgram';
import { execFile } from 'node:child_process';
import { readFileSync, readlinkSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { dueTime, dueUpTo } from './pacing.js';
import { reserveFdTable } from './fd-table.js';
import { RtpPortPool } from './port-pool.js';
import { RTP_HEADER_BYTES } from './rtp-packetizer.js';
import { nothingPlayed, type FromWorker, type RtpWorkerData, type ToWorker } from './rtp-worker-protocol.js';

const PTIME_MS = 20;
const FRAME_BYTES = 160;
const LATE_MS = 5;

interface Stream {
  /** performance.now() when packet 0 was due. */
  start: number;
  next: number;
  count: number;
  packets: Buffer;
  sent: number;
  late: number;
  /** Of `late`: packets already more than 5 ms late when the turn began (the host did not run the thread, or its event loop's round between turns was long). */
  lateOnWake: number;
  maxLate: number;
  /** Packets fallen due and not sent (hold, a move) since the stream last sent: the next ones are renumbered. */
  dropped: number;
}

interface WorkerSession {
  socket: Socket;
  release(): void;
  stream: Stream | undefined;
  /** stop() came, possibly before the stream started (connect pending): it never starts. */
  stopped: boolean;
  reportedError: boolean;
  /** The far end's offer lets us send nothing (hold): packets fall due and are dropped (retarget). */
  held: boolean;
  /** The socket connects to the far end's new address (retarget): packets falling due meanwhile are dropped. */
  moving: boolean;
  /** A play is connecting (a host name being looked up): a retarget meanwhile waits (pendingRetarget), applied once it started. */
  starting?: boolean;
  /** The latest retarget that came while the play or a move connected: applied once that is done. */
  pendingRetarget?: Extract<ToWorker, { t: 'retarget' }> | undefined;
}

const port = parentPort;
if (!port) throw new Error('rtp-worker.ts must run in a worker thread');
const data = workerData as RtpWorkerData;
const pool = new RtpPortPool(data.bindHost, data.portMin, data.portMax);
const sessions = new Map<number, WorkerSession>();
const post = (m: FromWorker): void => port.postMessage(m);
const PACKET_BYTES = RTP_HEADER_BYTES + FRAME_BYTES;

/** This thread's kernel id (Linux: /proc/thread-self names it). */
function threadId(): number {
  const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
  if (!Number.isInteger(tid) || tid <= 0) throw new Error('no thread id in /proc/thread-self');
  return tid;
}

/*
 * Raise this thread's scheduling priority, as media servers do (FreeSWITCH
 * -hp/-rp, rtpengine): on a busy host a packet's lateness is the time this
 * thread waits for a core, and the kernel's scheduler weighs threads by their
 * nice value. Linux only: /proc/thread-self names this thread's id, and
 * setpriority() on a thread id changes that thread alone. Without the right
 * (CAP_SYS_NICE) the thread keeps the process's priority and says so.
 */
function applyPriority(asked: number): void {
  try {
    const tid = threadId();
    setPriority(tid, asked);
    post({ t: 'priority', id: 0, asked, nice: getPriority(tid), tid });
  } catch (err) {
    post({ t: 'priority', id: 0, asked, error: (err as Error).message });
  }
}

/*
 * media.rtp.realtimePriority: SCHED_FIFO for this thread, as FreeSWITCH -rp
 * does. On Linux 6.6 and later (EEVDF) a nice value weighs a thread's share of
 * a core but does not make its wake-up preempt the running task: with HZ=250
 * the RTP thread waited up to a tick (4 ms) behind the sink, the main thread
 * or GC helpers. A real-time thread preempts them when its sleep ends. Node
 * has no sched_setscheduler(), so util-linux's chrt sets it on this thread's
 * id; /proc/thread-self/stat tells what the thread got. Needs CAP_SYS_NICE;
 * without it the thread falls back to media.rtp.threadNice and says so.
 */
const SCHED_FIFO = 1;

function applyRealtime(asked: number, fallback: () => void): void {
  let tid: number;
  try {
    tid = threadId();
  } catch (err) {
    post({ t: 'priority', id: 0, asked, policy: 'fifo', error: (err as Error).message });
    return fallback();
  }
  execFile('chrt', ['--fifo', '--pid', String(asked), String(tid)], { timeout: 5000 }, (err, _out, stderr) => {
    try {
      if (err) throw new Error(stderr.trim() || err.message);
      // Fields after "(comm) ": state is field 3, rt_priority 40, policy 41 (proc(5)).
      const stat = readFileSync('/proc/thread-self/stat', 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const policy = Number(fields[41 - 3]);
      if (policy !== SCHED_FIFO) throw new Error(`the thread's policy is ${policy} after chrt, not SCHED_FIFO`);
      post({ t: 'priority', id: 0, asked, policy: 'fifo', rtPriority: Number(fields[40 - 3]), tid });
    } catch (e) {
      post({ t: 'priority', id: 0, asked, policy: 'fifo', error: (e as Error).message });
      fallback();
    }
  });
}

/*
 * Before any socket is bound: room in the descriptor table for one socket per port of the range, so that no
 * bind waits for the table to grow while streams play (fd-table.ts: each doubling stalled this thread 5-14 ms).
 */
try {
  const r = reserveFdTable(pool.capacity);
  post({ t: 'fdTable', id: 0, sockets: pool.capacity, ...(r ? { opened: r.opened, tableSize: r.tableSize, ms: r.ms } : {}) });
} catch (err) {
  post({ t: 'fdTable', id: 0, sockets: pool.capacity, error: (err as Error).message });
}

const applyNice = (): void => {
  if (data.nice !== undefined) applyPriority(data.nice);
};
if (data.realtimePriority !== undefined) applyRealtime(data.realtimePriority, applyNice);
else applyNice();

/** Every packet of a stream, back to back (RFC 3550 5.1 header, marker on the first). */
function buildPackets(m: Extract<ToWorker, { t: 'play' }>): Buffer {
  const count = Math.floor(m.payload.length / FRAME_BYTES);
  const out = Buffer.allocUnsafe(count * PACKET_BYTES);
  for (let i = 0; i < count; i++) {
    const at = i * PACKET_BYTES;
    out[at] = 0x80;
    out[at + 1] = (i === 0 ? 0x80 : 0) | (m.payloadType & 0x7f);
    out.writeUInt16BE((m.sequence + i) & 0xffff, at + 2);
    out.writeUInt32BE((m.timestamp + i * FRAME_BYTES) >>> 0, at + 4);
    out.writeUInt32BE(m.ssrc >>> 0, at + 8);
    out.set(m.payload.subarray(i * FRAME_BYTES, (i + 1) * FRAME_BYTES), at + RTP_HEADER_BYTES);
  }
  return out;
}

/*
 * The pacer. One loop for every stream of the thread: each turn sends, for
 * every playing session, all its packets already due (drift-free: packet i
 * is due at start + 20·i, pacing.ts), then sleeps until the earliest next
 * due time with Atomics.wait, which sleeps to the microsecond. A libuv timer
 * (setTimeout) counts in whole milliseconds and fired 1-2 ms after the due
 * time on most wake-ups: a third of the 5 ms budget gone before the machine
 * added any delay of its own.
 *
 * While it sleeps the thread's event loop does not run, so the main thread
 * counts every command it posts in `wake[0]` (after posting it) and notifies:
 * the pacer sleeps only while every posted command has been handled here, and
 * a notify ends the sleep at once. Between two sleeps the loop goes round
 * once (setImmediate), which delivers those commands and any socket events.
 * With no stream playing the loop is idle: no turn, no sleep.
 *
 * Streams start on a GRID_MS grid (packet 0 is due at most GRID_MS after the
 * far end's address is known), so due times fall on at most 20/GRID_MS
 * instants per period: that bounds the turns a second whatever the number of
 * calls, and a turn's packets go out together.
 */
const GRID_MS = 1;
/** Set-up work (open, play) runs after a turn only while the next packet is further away than this. */
const SETUP_SLACK_MS = 0.5;
const wake = new Int32Array(data.wake);
let handled = 0;
let pacing = false;
/** Due time of the next packet of any stream (performance.now() ms); Infinity: none. */
let nextDue = Infinity;
/**
 * open and play commands that arrived while streams play. Binding a socket and
 * building a playback's packets take 0.1-0.3 ms each (several ms while the
 * code is cold); run as they arrive, a burst of new calls held every stream's
 * next packet back. The pacer runs them one by one in the slack after a turn.
 * stop and close run at once: they are cheap, and a far end's BYE stops the
 * audio now.
 */
const setup: ToWorker[] = [];

/** A turn: send what is due, then set-up work while there is slack, then let the loop go round. */
function pace(): void {
  nextDue = sendDue();
  while (setup.length > 0 && nextDue - performance.now() > SETUP_SLACK_MS) run(setup.shift()!);
  if (nextDue === Infinity && setup.length === 0) {
    pacing = false;
    return;
  }
  setImmediate(sleep);
}

/** The loop has gone round (commands and socket events delivered): sleep until the next packet is due. */
function sleep(): void {
  const wait = nextDue - performance.now();
  // Only while no posted command waits in the port; a new one (notify) ends the sleep.
  if (wait > 0 && Atomics.load(wake, 0) === handled) Atomics.wait(wake, 0, handled, wait);
  pace();
}

/** A stream starts (its packet 0 is due at `due`). */
function startPacing(due: number): void {
  nextDue = Math.min(nextDue, due);
  if (pacing) return;
  pacing = true;
  setImmediate(pace);
}

/** Sends every packet already due; returns the earliest due time still ahead (Infinity: no stream). */
function sendDue(): number {
  let soonest = Infinity;
  const woke = performance.now();
  for (const [id, s] of sessions) {
    const st = s.stream;
    if (!st) continue;
    const now = performance.now();
    const upTo = dueUpTo(st.start, PTIME_MS, st.next, st.count, now);
    // On hold, or moving to a new address: the announcement's time goes on, its packets are not sent.
    if (s.held || s.moving) {
      st.dropped += upTo - st.next;
      st.next = upTo;
    } else if (st.dropped > 0) renumber(st);
    for (; st.next < upTo; st.next++) {
      // Connected socket: no address lookup per packet; the view is the only allocation. A send that throws (the
      // socket not connected after all) ends this stream, never the thread and every other call's stream with it.
      try {
        s.socket.send(st.packets, st.next * PACKET_BYTES, PACKET_BYTES);
      } catch (err) {
        post({ t: 'socketError', id, message: `RTP send failed: ${(err as Error).message}` });
        break;
      }
      const due = dueTime(st.start, PTIME_MS, st.next);
      const lateMs = now - due;
      st.sent++;
      if (lateMs > LATE_MS) {
        st.late++;
        // Already late when the turn began: the host did not run the thread, or the event loop's round before it
        // (commands, socket events) was long; not this turn's own sending.
        if (woke - due > LATE_MS) st.lateOnWake++;
      }
      if (lateMs > st.maxLate) st.maxLate = lateMs;
    }
    if (st.next >= st.count) end(id, s, true);
    else if (st.next < upTo) end(id, s, false); // a send threw
    else soonest = Math.min(soonest, dueTime(st.start, PTIME_MS, st.next));
  }
  return soonest;
}

function end(id: number, s: WorkerSession, completed: boolean): void {
  const st = s.stream;
  if (!st) return;
  s.stream = undefined;
  post({ t: 'ended', id, completed, packets: st.sent, lateOver5ms: st.late, lateOnWake: st.lateOnWake, maxLateMs: st.maxLate });
}

async function open(id: number): Promise<void> {
  try {
    const { socket, release } = await pool.bind();
    const session: WorkerSession = { socket, release, stream: undefined, stopped: false, reportedError: false, held: false, moving: false };
    // On a connected socket an ICMP unreachable fails the following sends: report it once per session.
    socket.on('error', (err) => {
      if (session.reportedError) return;
      session.reportedError = true;
      post({ t: 'socketError', id, message: err.message });
    });
    // We never read the far end's audio; drain it so the kernel buffer does not fill.
    socket.on('message', () => undefined);
    sessions.set(id, session);
    post({ t: 'opened', id, port: socket.address().port });
  } catch (err) {
    post({ t: 'openFailed', id, message: (err as Error).message });
  }
}

/** A play command that sent nothing (stopped before it started, or no such session). */
function notPlayed(id: number): void {
  post(nothingPlayed(id));
}

function play(m: Extract<ToWorker, { t: 'play' }>): void {
  const s = sessions.get(m.id);
  if (!s || s.stream) return notPlayed(m.id);
  const packets = buildPackets(m);
  const start = (): void => {
    if (sessions.get(m.id) !== s || s.stopped) return notPlayed(m.id);
    s.stream = {
      start: Math.ceil(performance.now() / GRID_MS) * GRID_MS,
      next: 0,
      count: packets.length / PACKET_BYTES,
      packets,
      sent: 0,
      late: 0,
      lateOnWake: 0,
      maxLate: 0,
      dropped: 0,
    };
    startPacing(s.stream.start);
    // The far end moved while the stream connected to its old address: it follows now.
    const moved = s.pendingRetarget;
    s.pendingRetarget = undefined;
    if (moved) retarget(moved);
  };
  try {
    s.socket.remoteAddress();
    s.socket.disconnect();
  } catch {
    // not connected yet
  }
  // A far end we cannot connect to (bad address, wrong family, a name that does not resolve) ends the playback
  // instead of leaving it pending, unless it moved meanwhile: then the stream goes to where it moved. Node gives a
  // failed connect's error to its callback, not as an 'error' event: a stream started on the unconnected socket
  // would throw at its first send and take the thread with every call on it.
  const begin = (address: string, port: number, tried?: Extract<ToWorker, { t: 'retarget' }>): void => {
    const failed = (err: Error): void => {
      s.socket.off('error', failed);
      s.starting = false;
      const moved = s.pendingRetarget;
      // Kept: once started there, the stream takes its payload type and hold (start() applies it).
      if (moved && moved !== tried && !s.stopped) return begin(moved.address, moved.port, moved);
      post({ t: 'socketError', id: m.id, message: `cannot send RTP to ${address}:${port}: ${err.message}` });
      notPlayed(m.id);
    };
    s.starting = true;
    connectOrFail(s.socket, port, address, failed, () => {
      s.starting = false;
      start();
    });
  };
  begin(m.address, m.port);
}

/**
 * After packets fell due unsent (hold, a move): the rest are numbered on from the last one sent (RFC 3550 5.1: the
 * sequence number counts packets sent; the timestamp keeps the time gone by), the first of them marked as the start
 * of a talkspurt (RFC 3551 4.1).
 */
function renumber(st: Stream): void {
  for (let i = st.next; i < st.count; i++) {
    const at = i * PACKET_BYTES;
    st.packets.writeUInt16BE((st.packets.readUInt16BE(at + 2) - st.dropped) & 0xffff, at + 2);
  }
  if (st.next < st.count) st.packets[st.next * PACKET_BYTES + 1]! |= 0x80;
  st.dropped = 0;
}

function retarget(m: Extract<ToWorker, { t: 'retarget' }>): void {
  const s = sessions.get(m.id);
  if (!s) return;
  s.held = !m.send;
  const st = s.stream;
  // Connecting to the address the play named: this one is applied once the stream started. Not playing at all:
  // play() connects to the address of the call's latest answer.
  if (!st) {
    if (s.starting) s.pendingRetarget = m;
    return;
  }
  // A move still connecting (a host name being looked up): this one follows once it is done.
  if (s.moving) {
    s.pendingRetarget = m;
    return;
  }
  for (let i = st.next; i < st.count; i++) {
    const at = i * PACKET_BYTES + 1;
    st.packets[at] = (st.packets[at]! & 0x80) | (m.payloadType & 0x7f);
  }
  let now: { address: string; port: number } | undefined;
  try {
    now = s.socket.remoteAddress();
  } catch {
    // not connected
  }
  if (now?.address === m.address && now.port === m.port) return;
  s.moving = true;
  try {
    s.socket.disconnect();
  } catch {
    // not connected
  }
  // A later move that came meanwhile goes next (the address the far end names now).
  const next = (): boolean => {
    const later = s.pendingRetarget;
    s.pendingRetarget = undefined;
    if (later && sessions.get(m.id) === s && !s.stopped) retarget(later);
    return later !== undefined;
  };
  // An address we cannot connect to: nothing more is sent (as on hold); the call's BYE ends it.
  const failed = (err: Error): void => {
    s.socket.off('error', failed);
    s.moving = false;
    if (next()) return;
    s.held = true;
    post({ t: 'socketError', id: m.id, message: `cannot send RTP to ${m.address}:${m.port}: ${err.message}` });
  };
  connectOrFail(s.socket, m.port, m.address, failed, () => {
    s.moving = false;
    next();
  });
}

/**
 * Connects a call's socket to the far end. A failed connect goes to `failed` whether the socket emits it, Node
 * reports it to the callback, or connect throws at once (a port out of range): that call fails, never the thread and
 * every call on it. On success the `failed` error listener is taken off, then `connected`.
 */
function connectOrFail(socket: Socket, port: number, address: string, failed: (err: Error) => void, connected: () => void): void {
  socket.once('error', failed);
  try {
    socket.connect(port, address, (err?: Error) => {
      if (err) return failed(err);
      socket.off('error', failed);
      connected();
    });
  } catch (err) {
    failed(err instanceof Error ? err : new Error(String(err)));
  }
}

function stop(id: number): void {
  const s = sessions.get(id);
  if (!s) return;
  s.stopped = true;
  end(id, s, false);
}

function close(id: number): void {
  const s = sessions.get(id);
  if (!s) return post({ t: 'closed', id });
  end(id, s, false);
  sessions.delete(id);
  s.socket.close(() => {
    s.release();
    post({ t: 'closed', id });
  });
}

function run(m: ToWorker): void {
  switch (m.t) {
    case 'open':
      return void open(m.id);
    case 'play':
      return play(m);
    case 'retarget':
      return retarget(m);
    case 'stop':
      return stop(m.id);
    case 'close':
      return close(m.id);
  }
}

port.on('message', (m: ToWorker) => {
  handled++;
  if (pacing && (m.t === 'open' || m.t === 'play')) setup.push(m);
  else run(m);
});
