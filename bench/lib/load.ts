/**
 * Open-loop load: calls `fire(i)` for request i at its due time (see
 * OpenLoopSchedule), never waiting for earlier answers, and records for each
 * request its due time, when it actually left, when it finished and how.
 * HTTP requests go over keep-alive connections (`httpFirer`): the lean client
 * of raw-http.ts by default, node:http's agent with `client: 'node'`.
 */
import http from 'node:http';
import { RawHttpPool } from './raw-http.js';
import { OpenLoopSchedule } from './schedule.js';
import { Tally } from './stats.js';

export interface FireResult {
  ok: boolean;
  /** Failure kind, e.g. "429 rate_limited", "timeout", "ECONNRESET". */
  kind?: string;
  /** The request id of an accepted verification (flash bench joins it with the INVITE). */
  requestId?: string;
}

export interface LoadResult {
  total: number;
  sent: number;
  ok: number;
  failures: Tally;
  /** Epoch ms (performance.timeOrigin based) the schedule started. */
  startEpochMs: number;
  /** Per request, ms after the start: due, sent, finished (NaN when not sent / not finished). */
  due: Float64Array;
  sentAt: Float64Array;
  doneAt: Float64Array;
  okFlags: Uint8Array;
  requestIds: (string | undefined)[];
  /** Ms from the start to the last answer. */
  elapsedMs: number;
}

export interface LoadOptions {
  rate: number;
  durationSeconds: number;
  maxRequests: number;
  /** Above this many unanswered requests new ones are not sent but counted as "generator_in_flight_cap". */
  maxInFlight: number;
  /** Stop waiting for stragglers this long after the last request was due. */
  drainMs: number;
  fire(i: number): Promise<FireResult>;
  /** Called about once a second with progress (for a live line). */
  onProgress?(p: { elapsedMs: number; sent: number; ok: number; failed: number; inFlight: number }): void;
}

export async function runOpenLoop(o: LoadOptions): Promise<LoadResult> {
  const schedule = new OpenLoopSchedule(o.rate, o.durationSeconds, o.maxRequests);
  const n = schedule.total;
  const due = new Float64Array(n);
  const sentAt = new Float64Array(n).fill(Number.NaN);
  const doneAt = new Float64Array(n).fill(Number.NaN);
  const okFlags = new Uint8Array(n);
  const requestIds: (string | undefined)[] = new Array<string | undefined>(n);
  const failures = new Tally();
  let inFlight = 0;
  let sent = 0;
  let ok = 0;
  let lastDone = 0;
  const t0 = performance.now();
  const startEpochMs = performance.timeOrigin + t0;
  let allDone: () => void = () => undefined;
  const finished = new Promise<void>((r) => (allDone = r));
  let answered = 0;

  const settle = (i: number, r: FireResult): void => {
    const t = performance.now() - t0;
    doneAt[i] = t;
    lastDone = t;
    inFlight--;
    answered++;
    if (r.ok) {
      ok++;
      okFlags[i] = 1;
      requestIds[i] = r.requestId;
    } else failures.add(r.kind ?? 'error');
    if (schedule.done && answered === sent) allDone();
  };

  const launch = (i: number): void => {
    due[i] = schedule.dueMs(i);
    if (inFlight >= o.maxInFlight) {
      failures.add('generator_in_flight_cap');
      return;
    }
    inFlight++;
    sent++;
    sentAt[i] = performance.now() - t0;
    o.fire(i).then(
      (r) => settle(i, r),
      (err: unknown) => settle(i, { ok: false, kind: err instanceof Error ? ((err as NodeJS.ErrnoException).code ?? err.message) : String(err) }),
    );
  };

  let progressAt = 1000;
  await new Promise<void>((resolveSchedule) => {
    const tick = (): void => {
      const el = performance.now() - t0;
      const { from, to } = schedule.take(el);
      for (let i = from; i < to; i++) launch(i);
      if (o.onProgress && el >= progressAt) {
        progressAt += 1000;
        o.onProgress({ elapsedMs: el, sent, ok, failed: failures.total, inFlight });
      }
      if (schedule.done) return resolveSchedule();
      // setTimeout cannot wait less than ~1 ms: requests due meanwhile leave together at the next tick
      // (their latency is counted from their due time, so this slack is in the numbers).
      setTimeout(tick, Math.max(1, Math.floor(schedule.waitMs(performance.now() - t0))));
    };
    tick();
  });
  if (answered < sent) {
    await Promise.race([finished, new Promise((r) => setTimeout(r, o.drainMs).unref())]);
  }
  for (let i = 0; i < n; i++) if (!Number.isNaN(sentAt[i]!) && Number.isNaN(doneAt[i]!)) failures.add('no_answer_before_drain_end');
  return { total: n, sent, ok, failures, startEpochMs, due, sentAt, doneAt, okFlags, requestIds, elapsedMs: Math.max(lastDone, performance.now() - t0) };
}

export type HttpClientKind = 'raw' | 'node';

/** `--client`'s value, checked. */
export function httpClientArg(v: string): HttpClientKind {
  if (v !== 'raw' && v !== 'node') throw new Error(`--client must be raw or node (got ${v})`);
  return v;
}

export interface HttpTarget {
  host: string;
  port: number;
}

/**
 * `fire` for POST requests with a JSON body over keep-alive connections,
 * spread round-robin over `targets`. 2xx with `expectStatus` is ok; anything
 * else is a failure named by status and the API's error code.
 */
export function httpFirer(opts: {
  targets: HttpTarget[];
  path: string;
  headers: Record<string, string>;
  body(i: number): string;
  expectStatus: number;
  /** Connections per target (requests beyond wait in the agent, their wait counted as latency). */
  connections: number;
  timeoutMs: number;
  /** Read `request_id` from the answer. */
  wantRequestId: boolean;
  /** 'raw' (default): raw-http.ts, a fraction of node:http's CPU per request; 'node': node:http's agent. */
  client?: HttpClientKind;
}): { fire(i: number): Promise<FireResult>; close(): void } {
  const answer = (status: number, text: string): FireResult => {
    if (status === opts.expectStatus) {
      if (!opts.wantRequestId) return { ok: true };
      const m = /"request_id"\s*:\s*"([^"]+)"/.exec(text);
      return { ok: true, requestId: m?.[1] };
    }
    const code = /"error"\s*:\s*"([^"]+)"/.exec(text)?.[1] ?? '';
    return { ok: false, kind: `http_${status}${code ? ` ${code}` : ''}` };
  };
  if ((opts.client ?? 'raw') === 'raw') {
    const pools = opts.targets.map((t) => new RawHttpPool(t.host, t.port, opts.connections, opts.timeoutMs));
    const heads = opts.targets.map((t) => {
      const extra = Object.entries(opts.headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
      return `POST ${opts.path} HTTP/1.1\r\nHost: ${t.host}:${t.port}\r\n${extra}Content-Type: application/json\r\nContent-Length: `;
    });
    const fire = async (i: number): Promise<FireResult> => {
      const k = i % pools.length;
      const body = opts.body(i);
      const r = await pools[k]!.request(`${heads[k]!}${Buffer.byteLength(body)}\r\n\r\n${body}`);
      return 'error' in r ? { ok: false, kind: r.error } : answer(r.status, r.body);
    };
    return { fire, close: () => pools.forEach((p) => p.close()) };
  }
  const agents = opts.targets.map(() => new http.Agent({ keepAlive: true, maxSockets: opts.connections, maxFreeSockets: opts.connections, scheduling: 'fifo' }));
  const fire = (i: number): Promise<FireResult> =>
    new Promise<FireResult>((resolve) => {
      const k = i % opts.targets.length;
      const t = opts.targets[k]!;
      const body = opts.body(i);
      const req = http.request(
        {
          host: t.host,
          port: t.port,
          method: 'POST',
          path: opts.path,
          agent: agents[k],
          headers: { ...opts.headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve(answer(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8'))));
          res.on('error', (err: NodeJS.ErrnoException) => resolve({ ok: false, kind: err.code ?? err.message }));
        },
      );
      req.setTimeout(opts.timeoutMs, () => req.destroy(Object.assign(new Error('timeout'), { code: 'timeout' })));
      req.on('error', (err: NodeJS.ErrnoException) => resolve({ ok: false, kind: err.code ?? err.message }));
      req.end(body);
    });
  return { fire, close: () => agents.forEach((a) => a.destroy()) };
}
