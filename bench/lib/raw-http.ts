/**
 * A lean HTTP/1.1 client for the load generator: keep-alive connections on
 * `net` sockets, one request at a time per connection (no pipelining), the
 * request written as one string, the answer parsed just enough (status line,
 * Content-Length or chunked body, Connection: close). Requests beyond the
 * connections wait in a FIFO queue, their wait counted as latency, as with
 * node:http's agent.
 *
 * Why: the load generator runs on the same two cores as the engine, Redis and
 * SIPp. node:http's client costs about 0.1-0.17 ms of CPU per request here,
 * and at 2,000 requests/s that is a fifth of a core taken from the system
 * under test. This client does the same work for a fraction of it
 * (BENCHMARKS.md). `--client node` keeps node:http for comparison.
 */
import net from 'node:net';

export interface RawResponse {
  status: number;
  body: string;
}

interface Pending {
  payload: string;
  resolve(r: RawResponse | { error: string }): void;
}

const CRLFCRLF = Buffer.from('\r\n\r\n');

class Conn {
  socket: net.Socket | undefined;
  connected = false;
  current: Pending | undefined;
  writtenAt = 0;
  private buf: Buffer | undefined;

  constructor(private readonly pool: RawHttpPool) {}

  open(): void {
    const s = net.connect({ host: this.pool.host, port: this.pool.port, noDelay: true });
    this.socket = s;
    this.connected = false;
    this.buf = undefined;
    s.on('connect', () => {
      this.connected = true;
      this.pool.idle(this);
    });
    s.on('data', (chunk: Buffer) => this.onData(chunk));
    const gone = (code: string): void => {
      if (this.socket !== s) return;
      this.socket = undefined;
      s.destroy();
      const p = this.current;
      this.current = undefined;
      if (p) p.resolve({ error: code });
      else if (!this.connected) this.pool.connectFailed(code);
      this.pool.reopenLater(this);
    };
    s.on('error', (err: NodeJS.ErrnoException) => gone(err.code ?? err.message));
    s.on('close', () => gone('ECONNRESET'));
  }

  send(p: Pending): void {
    this.current = p;
    this.writtenAt = performance.now();
    this.socket!.write(p.payload);
  }

  /** Ends the request in flight with `code` and opens a new connection (a timeout). */
  abort(code: string): void {
    const s = this.socket;
    const p = this.current;
    this.current = undefined;
    this.socket = undefined;
    s?.destroy();
    if (p) p.resolve({ error: code });
    this.pool.reopenLater(this);
  }

  close(): void {
    const s = this.socket;
    this.socket = undefined;
    s?.destroy();
  }

  private onData(chunk: Buffer): void {
    const buf = this.buf ? Buffer.concat([this.buf, chunk]) : chunk;
    const head = buf.indexOf(CRLFCRLF);
    if (head < 0) {
      this.buf = buf;
      return;
    }
    const headers = buf.toString('latin1', 0, head);
    const status = Number(headers.slice(9, 12));
    const lower = headers.toLowerCase();
    const bodyStart = head + 4;
    let body: string;
    let end: number;
    const cl = /\r\ncontent-length:\s*(\d+)/.exec(lower);
    if (cl) {
      end = bodyStart + Number(cl[1]);
      if (buf.length < end) {
        this.buf = buf;
        return;
      }
      body = buf.toString('utf8', bodyStart, end);
    } else if (/\r\ntransfer-encoding:\s*chunked/.test(lower)) {
      const parsed = dechunk(buf, bodyStart);
      if (!parsed) {
        this.buf = buf;
        return;
      }
      ({ body, end } = parsed);
    } else {
      // No length: the body ends with the connection (not sent by the engine); take what came.
      end = buf.length;
      body = buf.toString('utf8', bodyStart);
    }
    this.buf = end < buf.length ? buf.subarray(end) : undefined;
    const p = this.current;
    this.current = undefined;
    if (p) p.resolve({ status, body });
    if (/\r\nconnection:\s*close/.test(lower)) {
      this.close();
      this.pool.reopenLater(this);
    } else this.pool.idle(this);
  }
}

/** A chunked body from `at`, or undefined while incomplete. */
function dechunk(buf: Buffer, at: number): { body: string; end: number } | undefined {
  const parts: Buffer[] = [];
  let i = at;
  for (;;) {
    const eol = buf.indexOf('\r\n', i, 'latin1');
    if (eol < 0) return undefined;
    const size = parseInt(buf.toString('latin1', i, eol), 16);
    if (Number.isNaN(size)) return { body: '', end: buf.length };
    const dataAt = eol + 2;
    if (size === 0) {
      const trailerEnd = buf.indexOf(CRLFCRLF, eol);
      const end = buf.indexOf('\r\n', dataAt, 'latin1') === dataAt ? dataAt + 2 : trailerEnd >= 0 ? trailerEnd + 4 : -1;
      if (end < 0) return undefined;
      return { body: Buffer.concat(parts).toString('utf8'), end };
    }
    if (buf.length < dataAt + size + 2) return undefined;
    parts.push(buf.subarray(dataAt, dataAt + size));
    i = dataAt + size + 2;
  }
}

/** `connections` keep-alive connections to one host:port, requests queued FIFO when all are busy. */
export class RawHttpPool {
  private readonly conns: Conn[] = [];
  private readonly free: Conn[] = [];
  private readonly queue: Pending[] = [];
  private qHead = 0;
  private readonly sweep: NodeJS.Timeout;
  private closed = false;

  constructor(
    readonly host: string,
    readonly port: number,
    connections: number,
    private readonly timeoutMs: number,
  ) {
    for (let i = 0; i < connections; i++) {
      const c = new Conn(this);
      this.conns.push(c);
      c.open();
    }
    // One timer for every request's timeout: an answer later than timeoutMs after its write ends as "timeout".
    this.sweep = setInterval(() => {
      const now = performance.now();
      for (const c of this.conns) if (c.current && now - c.writtenAt > this.timeoutMs) c.abort('timeout');
    }, Math.min(250, Math.max(10, timeoutMs / 4)));
    this.sweep.unref();
  }

  request(payload: string): Promise<RawResponse | { error: string }> {
    return new Promise((resolve) => {
      if (this.closed) return resolve({ error: 'closed' });
      const p: Pending = { payload, resolve };
      const c = this.free.pop();
      if (c) c.send(p);
      else this.queue.push(p);
    });
  }

  /** A connection is ready for the next request. */
  idle(c: Conn): void {
    if (this.closed) return c.close();
    const next = this.next();
    if (next) c.send(next);
    else this.free.push(c);
  }

  /** A connection could not be made: the oldest waiting request fails with its error (as with node:http). */
  connectFailed(code: string): void {
    this.next()?.resolve({ error: code });
  }

  reopenLater(c: Conn): void {
    const i = this.free.indexOf(c);
    if (i >= 0) this.free.splice(i, 1);
    if (this.closed) return;
    setTimeout(() => {
      if (!this.closed && !c.socket) c.open();
    }, 20).unref();
  }

  close(): void {
    this.closed = true;
    clearInterval(this.sweep);
    for (const c of this.conns) c.close();
    for (let p = this.next(); p; p = this.next()) p.resolve({ error: 'closed' });
  }

  private next(): Pending | undefined {
    if (this.qHead >= this.queue.length) return undefined;
    const p = this.queue[this.qHead++];
    if (this.qHead > 4096 && this.qHead * 2 > this.queue.length) {
      this.queue.splice(0, this.qHead);
      this.qHead = 0;
    }
    return p;
  }
}
