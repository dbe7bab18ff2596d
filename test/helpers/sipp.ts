/**
 * SIPp harness for integration tests.
 *
 * Starts SIPp (the far end of the engine's calls) as a child process on
 * 127.0.0.1 with a free port chosen here, waits until it has bound that
 * port, and gives typed access to what went over the wire by parsing SIPp's
 * own message log (-trace_msg). Each instance has its own temp directory
 * (logs, stdout/stderr), removed by stop() once the logs are cached.
 *
 *   const uas = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'tcp' });
 *   // point the engine's trunk at uas.uri, place a call ...
 *   const exit = await uas.waitForExit(10_000);
 *   expect(exit.code).toBe(0);
 *   const invite = uas.requests('INVITE')[0];
 *   expect(sipUriUser(invite?.header('p-asserted-identity'))).toBe('+44190873....');
 *   await uas.stop();
 *
 * Scenarios live in sip-test/ (see sip-test/README.md); `scenario` is the
 * file name without `.xml`, or a path to an .xml file.
 *
 * SIPp facts this relies on (checked with SIPp 3.6.1):
 *  - SIGTERM makes SIPp exit with code 0: SippExit.stopped tells whether the
 *    harness stopped it, so a 0 from stop() is not mistaken for success.
 *  - Exit codes: 0 all calls succeeded, 1 at least one failed, 97 internal
 *    command, 99 no call processed, 255 fatal (also -timeout with
 *    -timeout_error, and the <error> action used by uas-407-challenge).
 *  - SIPp also binds RTP echo ports (6000+, auto-incremented when busy) and
 *    a UDP control port (8888+); -mi/-ci keep both on 127.0.0.1.
 *  - -timeout is a soft stop (calls in progress run to their end), so the
 *    harness also SIGKILLs the process 5 s after maxLifetimeMs.
 *  - -set NAME must be a <Global> of the scenario, or SIPp exits 255.
 *  - The -trace_err file of uas-183-then-180-cancel / uas-answer contains
 *    "receive timeout ... jumping to label" lines: their wait loops, not errors.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Directory holding the SIPp scenarios (sip-test/ at the repo root). */
export const SIP_TEST_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'sip-test');

/** Fixed digest credentials uas-407-challenge expects. */
export const SIPP_TEST_CREDENTIALS = {
  username: 'trunkuser',
  password: 'trunkpass',
  realm: 'flashverify.test',
} as const;

export type SippTransport = 'udp' | 'tcp';

export interface SippOptions {
  /** Scenario name in sip-test/ without `.xml` (e.g. 'uas-ring-cancel'), or a path to an .xml file. */
  scenario: string;
  /** Default 'udp' (SIPp -t u1; 'tcp' is -t t1). */
  transport?: SippTransport;
  /** Calls to process before exiting (-m). Default 1. */
  calls?: number;
  /** Scenario variables passed as `-set NAME VALUE` (e.g. { hold_ms: 4000 }). */
  vars?: Record<string, string | number>;
  /** Extra SIPp arguments, appended last. */
  extraArgs?: string[];
  /**
   * Hard upper bound on the process lifetime: SIPp's own -timeout (with
   * -timeout_error, so reaching it exits 255), and the harness SIGKILLs the
   * process 5 s after that. Default 120 000 ms.
   */
  maxLifetimeMs?: number;
  /** Keep the temp directory on stop() (also when SIPP_KEEP_LOGS=1 is set). */
  keepLogs?: boolean;
}

export interface SippUasOptions extends SippOptions {
  /** Local port; default a free one chosen by the harness. */
  port?: number;
  /** How long to wait for SIPp to bind its port. Default 5000 ms. */
  startTimeoutMs?: number;
}

export interface SippUacOptions extends SippOptions {
  /** Where to send the calls, 'host:port' (loopback only). */
  target: string;
  /** Request-URI user (SIPp -s): the number dialled. Default '79161234567'. */
  service?: string;
  /** Digest credentials for [authentication] (-au / -ap). */
  auth?: { username: string; password: string };
  /** Call rate (calls per second, -r). */
  rate?: number;
}

/** One message per transaction, in order: a UDP retransmission repeats the Via (branch) and the CSeq. */
export function distinctTransactions(msgs: readonly SipMessage[]): SipMessage[] {
  const seen = new Set<string>();
  return msgs.filter((m) => {
    const k = `${m.method} ${m.header('via')} ${m.header('cseq')}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

export interface SipMessage {
  direction: 'received' | 'sent';
  /** 'UDP' | 'TCP' as SIPp logged it. */
  transport: string;
  /** Timestamp of SIPp's log entry ("2026-01-01 12:00:00.123456"). */
  timestamp: string;
  startLine: string;
  /** Set for requests: 'INVITE', 'CANCEL', ... */
  method?: string;
  /** Set for responses: 180, 487, ... */
  status?: number;
  /** Header names lower-cased (compact forms expanded), values in order. */
  headers: Record<string, string[]>;
  body: string;
  raw: string;
  /** First value of a header (case-insensitive; compact forms accepted). */
  header(name: string): string | undefined;
}

export interface SippExit {
  /** Process exit code (null when killed by a signal). */
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True when stop() ended it (SIPp exits 0 on SIGTERM: not a success). */
  stopped: boolean;
  /** True when waitForExit() gave up before the process exited. */
  timedOut: boolean;
  stdout: string;
  stderr: string;
  /** SIPp's -trace_err file: unexpected messages, timeouts, <error> text. */
  errors: string;
}

export interface SippProcess {
  readonly pid: number;
  readonly transport: SippTransport;
  readonly scenarioFile: string;
  /** Per-instance temp directory (removed by stop() unless keepLogs). */
  readonly dir: string;
  readonly args: readonly string[];
  /** Every message SIPp logged so far, in order. */
  messages(): SipMessage[];
  /** Messages SIPp received (requests from the engine, for a UAS). */
  received(): SipMessage[];
  /** Messages SIPp sent. */
  sent(): SipMessage[];
  /** Received requests, optionally of one method. */
  requests(method?: string): SipMessage[];
  /** Resolves with the first logged message matching `pred` (polls the log). */
  waitForMessage(pred: (m: SipMessage) => boolean, timeoutMs: number): Promise<SipMessage>;
  /** Resolves when the process exits, or after timeoutMs with timedOut=true (the process is left running). */
  waitForExit(timeoutMs: number): Promise<SippExit>;
  /** SIGTERM, then SIGKILL after 2 s; caches the logs and removes the temp dir. Idempotent. */
  stop(): Promise<SippExit>;
}

export interface SippUas extends SippProcess {
  readonly host: string;
  readonly port: number;
  /** SIP URI of the far end, e.g. `sip:127.0.0.1:5072` or `sip:127.0.0.1:5072;transport=tcp`. */
  readonly uri: string;
}

const HOST = '127.0.0.1';
const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort when a test file dies without stopping its SIPp instances.
  process.once('exit', () => {
    for (const child of live) {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    }
  });
}

/** Absolute path of a scenario given by name or path. */
export function scenarioPath(scenario: string): string {
  if (scenario.endsWith('.xml')) return isAbsolute(scenario) ? scenario : resolve(scenario);
  return join(SIP_TEST_DIR, `${scenario}.xml`);
}

/** A port free for both UDP and TCP on 127.0.0.1 (best effort: it is released before SIPp binds it). */
export async function findFreePort(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await new Promise<number>((res, rej) => {
      const srv = createServer();
      srv.once('error', rej);
      srv.listen(0, HOST, () => {
        const addr = srv.address();
        const p = typeof addr === 'object' && addr !== null ? addr.port : 0;
        srv.close(() => res(p));
      });
    });
    const udpFree = await new Promise<boolean>((res) => {
      const sock = createSocket('udp4');
      sock.once('error', () => {
        sock.close();
        res(false);
      });
      sock.bind(port, HOST, () => sock.close(() => res(true)));
    });
    if (port > 0 && udpFree) return port;
  }
  throw new Error('findFreePort: no port free for both UDP and TCP on 127.0.0.1');
}

// ---------------------------------------------------------------- message log parsing

const COMPACT: Record<string, string> = {
  f: 'from',
  t: 'to',
  i: 'call-id',
  v: 'via',
  m: 'contact',
  l: 'content-length',
  c: 'content-type',
  k: 'supported',
  s: 'subject',
  e: 'content-encoding',
  o: 'event',
  r: 'refer-to',
};

function canonicalHeaderName(name: string): string {
  const n = name.trim().toLowerCase();
  return COMPACT[n] ?? n;
}

/** Parses one SIP message (start line, headers with folding, body). */
export function parseSipMessage(
  raw: string,
  meta: Pick<SipMessage, 'direction' | 'transport' | 'timestamp'> = {
    direction: 'received',
    transport: '',
    timestamp: '',
  },
): SipMessage {
  const text = raw.replace(/\r\n/g, '\n').replace(/^\n+/, '');
  const sep = text.indexOf('\n\n');
  const head = sep >= 0 ? text.slice(0, sep) : text;
  const body = sep >= 0 ? text.slice(sep + 2) : '';
  const lines = head.split('\n');
  const startLine = (lines.shift() ?? '').trim();
  const headers: Record<string, string[]> = {};
  let last: string | undefined;
  for (const line of lines) {
    if (/^[ \t]/.test(line) && last !== undefined) {
      const vals = headers[last];
      if (vals && vals.length > 0) vals[vals.length - 1] = `${vals[vals.length - 1]} ${line.trim()}`;
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const name = canonicalHeaderName(line.slice(0, colon));
    const value = line.slice(colon + 1).trim();
    (headers[name] ??= []).push(value);
    last = name;
  }
  const msg: SipMessage = {
    ...meta,
    startLine,
    headers,
    body,
    raw: text,
    header(name: string): string | undefined {
      return headers[canonicalHeaderName(name)]?.[0];
    },
  };
  const resp = /^SIP\/2\.0\s+(\d{3})/.exec(startLine);
  if (resp?.[1] !== undefined) msg.status = Number(resp[1]);
  else {
    const method = /^([A-Za-z]+)\s/.exec(startLine)?.[1];
    if (method !== undefined) msg.method = method.toUpperCase();
  }
  return msg;
}

const ENTRY_RE = /^-{20,} (\S+ \S+)\n(UDP|TCP|TLS|SCTP|WS)\s+message\s+(received|sent)[^\n]*\n/;

/** Parses a SIPp -trace_msg file into messages. Unknown entries are skipped. */
export function parseSippMessageLog(text: string): SipMessage[] {
  const out: SipMessage[] = [];
  const normalized = text.replace(/\r\n/g, '\n');
  const chunks = normalized.split(/\n(?=-{20,} \S+ \S+\n)/);
  for (const chunk of chunks) {
    const c = chunk.startsWith('\n') ? chunk.slice(1) : chunk;
    const m = ENTRY_RE.exec(c);
    if (!m) continue;
    const [whole, timestamp = '', transport = '', dir = ''] = m;
    const raw = c.slice(whole.length).replace(/\n+$/, '\n');
    if (raw.trim() === '') continue;
    out.push(
      parseSipMessage(raw, {
        direction: dir === 'sent' ? 'sent' : 'received',
        transport,
        timestamp,
      }),
    );
  }
  return out;
}

/** The URI inside a name-addr / addr-spec header value (From, To, P-Asserted-Identity, Contact). */
export function headerUri(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const angle = /<([^>]*)>/.exec(value);
  if (angle?.[1] !== undefined) return angle[1].trim();
  return value.split(';')[0]?.trim() || undefined;
}

/**
 * The user part of a sip:/sips:/tel: URI in a header value, i.e. the number a
 * handset would display: `"x" <sip:+4419087300123@host;user=phone>;tag=1`
 * gives `+4419087300123`; `<tel:+4419087300123>` gives `+4419087300123`.
 */
export function sipUriUser(value: string | undefined): string | undefined {
  const uri = headerUri(value);
  if (uri === undefined) return undefined;
  const tel = /^tel:([^;>]+)/i.exec(uri);
  if (tel?.[1] !== undefined) return decodeURIComponent(tel[1]);
  const sip = /^sips?:([^@;>]+)@/i.exec(uri);
  if (sip?.[1] !== undefined) return decodeURIComponent(sip[1].split(':')[0] ?? sip[1]);
  return undefined;
}

/** Digest parameters of an Authorization / Proxy-Authorization value. */
export function parseDigestParams(value: string): Record<string, string> {
  const params: Record<string, string> = {};
  const rest = value.replace(/^\s*Digest\s+/i, '');
  const re = /([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))/g;
  for (let m = re.exec(rest); m; m = re.exec(rest)) {
    const k = m[1];
    if (k !== undefined) params[k.toLowerCase()] = m[2] ?? m[3] ?? '';
  }
  return params;
}

/**
 * Recomputes an MD5 digest response (RFC 2617/7616, qop=auth or no qop) and
 * compares it with the one in `authorization` (the Proxy-Authorization
 * value). SIPp cannot check the password of a Proxy-Authorization itself:
 * this is how tests verify the engine's credentials.
 */
export function verifyDigestResponse(
  authorization: string | undefined,
  opts: { method: string; password: string; username?: string; realm?: string; nonce?: string },
): boolean {
  if (authorization === undefined || !/^\s*Digest\s/i.test(authorization)) return false;
  const p = parseDigestParams(authorization);
  const { username, realm, nonce, uri, response } = p;
  if (!username || realm === undefined || !nonce || !uri || !response) return false;
  if (opts.username !== undefined && username !== opts.username) return false;
  if (opts.realm !== undefined && realm !== opts.realm) return false;
  if (opts.nonce !== undefined && nonce !== opts.nonce) return false;
  const algorithm = (p.algorithm ?? 'MD5').toUpperCase();
  if (algorithm !== 'MD5') return false;
  const md5 = (s: string): string => createHash('md5').update(s).digest('hex');
  const ha1 = md5(`${username}:${realm}:${opts.password}`);
  const ha2 = md5(`${opts.method}:${uri}`);
  const qop = p.qop;
  let expected: string;
  if (qop === undefined) expected = md5(`${ha1}:${nonce}:${ha2}`);
  else if (qop.toLowerCase() === 'auth' && p.nc !== undefined && p.cnonce !== undefined)
    expected = md5(`${ha1}:${nonce}:${p.nc}:${p.cnonce}:${qop}:${ha2}`);
  else return false;
  return expected === response.toLowerCase();
}

// ---------------------------------------------------------------- process management

function readIfExists(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

function tail(s: string, max = 4000): string {
  return s.length > max ? `...${s.slice(-max)}` : s;
}

/** Inodes of the sockets bound to 127.0.0.1:port (UDP, or TCP in LISTEN) from /proc/net. */
function boundSocketInodes(port: number, transport: SippTransport): string[] | undefined {
  const file = transport === 'udp' ? '/proc/net/udp' : '/proc/net/tcp';
  if (!existsSync(file)) return undefined;
  const want = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const inodes: string[] = [];
  for (const line of readIfExists(file).split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols[1] !== want) continue;
    if (transport === 'tcp' && cols[3] !== '0A') continue; // LISTEN
    if (cols[9] !== undefined) inodes.push(cols[9]);
  }
  return inodes;
}

/** True when process `pid` owns a socket bound to the port; undefined when /proc is unavailable. */
function pidHasPort(pid: number, port: number, transport: SippTransport): boolean | undefined {
  const inodes = boundSocketInodes(port, transport);
  if (inodes === undefined) return undefined;
  if (inodes.length === 0) return false;
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false;
  }
  for (const fd of fds) {
    try {
      const link = readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (inodes.some((i) => link === `socket:[${i}]`)) return true;
    } catch {
      /* fd closed meanwhile */
    }
  }
  return false;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Spawned {
  proc: SippProcess;
  child: ChildProcess;
  exited: () => boolean;
}

function spawnSipp(
  opts: SippOptions,
  target: string | undefined,
  localPort: number | undefined,
  extra: string[],
): Spawned {
  installExitHook();
  const transport: SippTransport = opts.transport ?? 'udp';
  const scenarioFile = scenarioPath(opts.scenario);
  if (!existsSync(scenarioFile)) throw new Error(`SIPp scenario not found: ${scenarioFile}`);
  const maxLifetimeMs = opts.maxLifetimeMs ?? 120_000;
  const dir = mkdtempSync(join(tmpdir(), 'flashverify-sipp-'));
  const files = {
    messages: join(dir, 'messages.log'),
    errors: join(dir, 'errors.log'),
    screen: join(dir, 'screen.log'),
    stdout: join(dir, 'stdout.log'),
    stderr: join(dir, 'stderr.log'),
  };
  const args: string[] = [
    '-sf', scenarioFile,
    '-t', transport === 'udp' ? 'u1' : 't1',
    '-i', HOST,
    '-mi', HOST,
    '-ci', HOST,
    ...(localPort !== undefined ? ['-p', String(localPort)] : []),
    '-m', String(opts.calls ?? 1),
    '-nostdin',
    '-trace_msg', '-message_file', files.messages,
    '-trace_err', '-error_file', files.errors,
    '-trace_screen', '-screen_file', files.screen,
    '-timeout', `${Math.max(1, Math.ceil(maxLifetimeMs / 1000))}s`, '-timeout_error',
  ];
  for (const [k, v] of Object.entries(opts.vars ?? {})) args.push('-set', k, String(v));
  args.push(...extra, ...(opts.extraArgs ?? []));
  if (target !== undefined) args.push(target);

  const outFd = openSync(files.stdout, 'w');
  const errFd = openSync(files.stderr, 'w');
  let child: ChildProcess;
  try {
    child = spawn('sipp', args, { stdio: ['ignore', outFd, errFd], cwd: dir });
  } finally {
    closeSync(outFd);
    closeSync(errFd);
  }
  live.add(child);

  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  let spawnError: Error | undefined;
  const exitPromise = new Promise<void>((res) => {
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      live.delete(child);
      res();
    });
    child.once('error', (err) => {
      spawnError = err;
      exitInfo ??= { code: null, signal: null };
      live.delete(child);
      res();
    });
  });

  const killTimer = setTimeout(() => {
    if (!exitInfo && child.pid !== undefined) child.kill('SIGKILL');
  }, maxLifetimeMs + 5000);
  killTimer.unref();

  let stopped = false;
  let removed = false;
  let cached: { messages: string; errors: string; stdout: string; stderr: string } | undefined;
  const keep = opts.keepLogs === true || process.env.SIPP_KEEP_LOGS === '1';

  const logs = () =>
    cached ?? {
      messages: readIfExists(files.messages),
      errors: readIfExists(files.errors),
      stdout: readIfExists(files.stdout),
      stderr: readIfExists(files.stderr),
    };
  const exitResult = (timedOut: boolean): SippExit => {
    const l = logs();
    return {
      code: exitInfo?.code ?? null,
      signal: exitInfo?.signal ?? null,
      stopped,
      timedOut,
      stdout: tail(l.stdout),
      stderr: spawnError ? `${spawnError.message}\n${l.stderr}` : l.stderr,
      errors: l.errors,
    };
  };
  const messages = () => parseSippMessageLog(logs().messages);

  const proc: SippProcess = {
    pid: child.pid ?? -1,
    transport,
    scenarioFile,
    dir,
    args,
    messages,
    received: () => messages().filter((m) => m.direction === 'received'),
    sent: () => messages().filter((m) => m.direction === 'sent'),
    requests: (method?: string) =>
      messages().filter(
        (m) => m.direction === 'received' && m.method !== undefined && (method === undefined || m.method === method.toUpperCase()),
      ),
    async waitForMessage(pred, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = messages().find(pred);
        if (found) return found;
        if (Date.now() >= deadline) {
          throw new Error(`SIPp (${opts.scenario}): no matching message within ${timeoutMs} ms; log so far:\n${tail(logs().messages)}`);
        }
        if (exitInfo) {
          // one more look after the process flushed its last lines
          const last = messages().find(pred);
          if (last) return last;
          throw new Error(`SIPp (${opts.scenario}) exited (code ${String(exitInfo.code)}) without a matching message`);
        }
        await sleep(25);
      }
    },
    async waitForExit(timeoutMs) {
      if (!exitInfo) {
        let t: NodeJS.Timeout | undefined;
        await Promise.race([exitPromise, new Promise<void>((r) => (t = setTimeout(r, timeoutMs)))]);
        if (t) clearTimeout(t);
      }
      return exitResult(!exitInfo);
    },
    async stop() {
      if (!exitInfo && child.pid !== undefined) {
        stopped = true;
        child.kill('SIGTERM');
        let t: NodeJS.Timeout | undefined;
        await Promise.race([exitPromise, new Promise<void>((r) => (t = setTimeout(r, 2000)))]);
        if (t) clearTimeout(t);
        if (!exitInfo) {
          child.kill('SIGKILL');
          await exitPromise;
        }
      }
      clearTimeout(killTimer);
      if (!removed) {
        cached = logs();
        removed = true;
        if (!keep) rmSync(dir, { recursive: true, force: true });
      }
      return exitResult(false);
    },
  };
  return { proc, child, exited: () => exitInfo !== undefined };
}

function startupError(what: string, proc: SippProcess, exit: SippExit | undefined): Error {
  const parts = [
    `SIPp failed to start (${what})`,
    `command: sipp ${proc.args.join(' ')}`,
    exit ? `exit code: ${String(exit.code)} signal: ${String(exit.signal)}` : '',
    exit?.stderr ? `stderr:\n${tail(exit.stderr)}` : '',
    exit?.errors ? `error log:\n${tail(exit.errors)}` : '',
    exit?.stdout ? `stdout (tail):\n${tail(exit.stdout, 1500)}` : '',
  ];
  return new Error(parts.filter(Boolean).join('\n'));
}

/**
 * Starts a SIPp UAS scenario on 127.0.0.1 and resolves once it has bound its
 * port. Rejects (with SIPp's stderr and error log in the message) when SIPp
 * exits or does not bind within startTimeoutMs. With no `port` given, a free
 * port is chosen and the start is retried up to 3 times if it was taken.
 */
export async function startSippUas(opts: SippUasOptions): Promise<SippUas> {
  const transport: SippTransport = opts.transport ?? 'udp';
  const startTimeoutMs = opts.startTimeoutMs ?? 5000;
  const attempts = opts.port === undefined ? 3 : 1;
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < attempts; attempt++) {
    const port = opts.port ?? (await findFreePort());
    const { proc, exited } = spawnSipp(opts, undefined, port, []);
    const deadline = Date.now() + startTimeoutMs;
    let ready = false;
    while (!ready) {
      if (exited()) break;
      const bound = proc.pid > 0 ? pidHasPort(proc.pid, port, transport) : false;
      if (bound === true) ready = true;
      else if (bound === undefined) {
        // no /proc: give SIPp a moment, then trust it if it is still alive
        await sleep(300);
        ready = !exited();
        break;
      } else if (Date.now() >= deadline) break;
      else await sleep(20);
    }
    if (ready && !exited()) {
      return {
        ...proc,
        host: HOST,
        port,
        uri: transport === 'tcp' ? `sip:${HOST}:${port};transport=tcp` : `sip:${HOST}:${port}`,
      };
    }
    const wasExited = exited();
    const exit = wasExited ? await proc.waitForExit(1000) : undefined;
    const err = startupError(wasExited ? 'exited during start-up' : `port ${port} not bound within ${startTimeoutMs} ms`, proc, exit);
    await proc.stop();
    lastError = err;
    const portClash = /bind|address already in use|in use/i.test(`${exit?.stderr ?? ''}${exit?.errors ?? ''}`);
    if (!portClash) break;
  }
  throw lastError ?? new Error('SIPp failed to start');
}

export interface SippRunResult extends SippExit {
  messages: SipMessage[];
}

/**
 * Runs a SIPp UAC scenario (sip-test/uac-*.xml) against `target` and waits
 * for it to finish (at most maxLifetimeMs, default 60 s). The temp dir is
 * removed afterwards; the parsed messages are returned.
 */
export async function runSippUac(opts: SippUacOptions): Promise<SippRunResult> {
  if (!/^127\.0\.0\.1:\d+$/.test(opts.target)) throw new Error(`runSippUac: target must be 127.0.0.1:PORT, got ${opts.target}`);
  const maxLifetimeMs = opts.maxLifetimeMs ?? 60_000;
  const extra = ['-s', opts.service ?? '79161234567'];
  if (opts.auth) extra.push('-au', opts.auth.username, '-ap', opts.auth.password);
  if (opts.rate !== undefined) extra.push('-r', String(opts.rate));
  const port = await findFreePort();
  const { proc } = spawnSipp({ ...opts, maxLifetimeMs }, opts.target, port, extra);
  const exit = await proc.waitForExit(maxLifetimeMs + 6000);
  const messages = proc.messages();
  const final = await proc.stop();
  return { ...final, timedOut: exit.timedOut, stopped: exit.timedOut ? final.stopped : false, messages };
}
