import { spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import net from 'node:net';
import pino, { type Logger } from 'pino';
import type { CallDelegate, CallFailure, OutboundCall } from '../../../src/sip/call-originator.js';
import { EmbeddedSipOriginator, type EmbeddedSipOriginatorOptions } from '../../../src/sip/embedded-originator.js';
import { getHeader, getHeaders, type ParsedRequest } from '../../../src/sip/message.js';
import type { TrunkConfig } from '../../../src/config/schema.js';

export const testLogger: Logger = pino({ level: process.env['SIP_TEST_LOG'] ?? 'silent' });

/** A port free on both UDP and TCP on 127.0.0.1. */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = dgram.createSocket('udp4');
      s.once('error', reject);
      s.bind(0, '127.0.0.1', () => {
        const p = s.address().port;
        s.close(() => resolve(p));
      });
    });
    const tcpFree = await new Promise<boolean>((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (tcpFree) return port;
  }
}

async function udpPortTaken(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    s.once('error', () => resolve(true));
    s.bind(port, '127.0.0.1', () => s.close(() => resolve(false)));
  });
}

async function tcpAccepting(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect({ host: '127.0.0.1', port });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export interface SippProcess {
  child: ChildProcess;
  output: () => string;
  exit: Promise<number | null>;
}

/** Start SIPp and wait until it listens on `port`. */
export async function startSipp(args: string[], port: number, transport: 'udp' | 'tcp'): Promise<SippProcess> {
  const child = spawn('sipp', [...args, '-i', '127.0.0.1', '-p', String(port), '-timeout', '20s', '-nostdin'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  // Note: probing TCP makes SIPp accept (and see closed) one connection, which it tolerates.
  const deadline = Date.now() + 5000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`sipp exited early (${child.exitCode}): ${out}`);
    const ready = transport === 'udp' ? await udpPortTaken(port) : await tcpAccepting(port);
    if (ready) break;
    if (Date.now() > deadline) throw new Error(`sipp did not start: ${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { child, output: () => out, exit };
}

export function killSipp(p: SippProcess | undefined): void {
  if (p === undefined || p.child.exitCode !== null || p.child.pid === undefined) return;
  try {
    process.kill(p.child.pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

export function trunk(uri: string, extra: Partial<TrunkConfig> = {}): TrunkConfig {
  return { name: 'test', uri, cps: 10, ringOn183: false, dummySdp: false, headers: {}, ...extra };
}

export type CallEvent =
  | { type: 'provisional'; status: number }
  | { type: 'answered'; crossedCancel: boolean; sdp: string | undefined }
  | { type: 'failed'; failure: CallFailure }
  | { type: 'cancelled' }
  | { type: 'remoteHangup' }
  | { type: 'ended' };

/** Delegate that records events and lets tests await one. */
export function recorder(): {
  delegate: CallDelegate;
  events: CallEvent[];
  waitFor: (type: CallEvent['type'], timeoutMs?: number) => Promise<CallEvent>;
} {
  const events: CallEvent[] = [];
  const waiters: { type: CallEvent['type']; resolve: (e: CallEvent) => void }[] = [];
  const push = (e: CallEvent): void => {
    events.push(e);
    for (const w of [...waiters]) {
      if (w.type === e.type) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(e);
      }
    }
  };
  const delegate: CallDelegate = {
    onProvisional: (status) => push({ type: 'provisional', status }),
    onAnswered: (sdp, crossedCancel) => push({ type: 'answered', sdp, crossedCancel }),
    onFailed: (failure) => push({ type: 'failed', failure }),
    onCancelled: () => push({ type: 'cancelled' }),
    onRemoteHangup: () => push({ type: 'remoteHangup' }),
    onEnded: () => push({ type: 'ended' }),
  };
  const waitFor = (type: CallEvent['type'], timeoutMs = 10_000): Promise<CallEvent> => {
    const seen = events.find((e) => e.type === type);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${type}; got ${JSON.stringify(events)}`)), timeoutMs);
      waiters.push({
        type,
        resolve: (e) => {
          clearTimeout(timer);
          resolve(e);
        },
      });
    });
  };
  return { delegate, events, waitFor };
}

/** A scripted peer's response to `req`: its Via, From, To (with `toTag` added when it had none), Call-ID and CSeq. */
export function responseTo(
  req: ParsedRequest,
  status: number,
  reason: string,
  extra: string[] = [],
  toTag: string | undefined = 'peer-tag',
  body = '',
): string {
  return [
    `SIP/2.0 ${status} ${reason}`,
    ...getHeaders(req, 'via').map((v) => `Via: ${v}`),
    `From: ${getHeader(req, 'from')}`,
    `To: ${getHeader(req, 'to')}${toTag !== undefined && req.to.tag === undefined ? `;tag=${toTag}` : ''}`,
    `Call-ID: ${req.callId}`,
    `CSeq: ${req.cseq.seq} ${req.cseq.method}`,
    ...extra,
    `Content-Length: ${Buffer.byteLength(body)}`,
    '',
    body,
  ].join('\r\n');
}

/** The embedded UAC under test on an ephemeral loopback port, started, as a scripted peer's tests set it up. */
/**
 * A flash call from +441234567890 to +447700900123: CANCEL at the first provisional. Resolves with its events as
 * text (`provisional 180`, `failed <reason>: <phrase>`, `cancelled`, `ended`) once it has ended.
 */
export async function flashCall(sip: EmbeddedSipOriginator, trunkConfig: TrunkConfig, logger: Logger = testLogger): Promise<string[]> {
  const rec = recorder();
  let call: OutboundCall | undefined;
  const delegate: CallDelegate = {
    ...rec.delegate,
    onProvisional: (status, reason, body) => {
      rec.delegate.onProvisional?.(status, reason, body);
      call?.cancel();
    },
  };
  call = sip.originate({ to: '+447700900123', from: '+441234567890', trunk: trunkConfig, logger }, delegate);
  await rec.waitFor('ended', 10_000);
  return rec.events.map((e) => (e.type === 'provisional' ? `${e.type} ${e.status}` : e.type === 'failed' ? `failed ${e.failure.reason}: ${e.failure.phrase ?? ''}` : e.type));
}

export async function startLoopbackUac({
  transports,
  t1Ms,
  tls,
  trunks,
  dns,
  onFailover,
  logger = testLogger,
}: {
  transports: ('udp' | 'tcp')[];
  t1Ms: number;
  tls?: EmbeddedSipOriginatorOptions['tls'];
  trunks?: EmbeddedSipOriginatorOptions['trunks'];
  dns?: EmbeddedSipOriginatorOptions['dns'];
  onFailover?: EmbeddedSipOriginatorOptions['onFailover'];
  logger?: Logger;
}): Promise<EmbeddedSipOriginator> {
  const options: EmbeddedSipOriginatorOptions = {
    listen: { host: '127.0.0.1', port: 0, transports },
    timers: { t1Ms, t2Ms: 4000, t4Ms: 5000 },
    userAgent: 'fv-ua/1.0',
    logger,
    tls,
    trunks,
    dns,
    onFailover,
  };
  const sip = new EmbeddedSipOriginator(options);
  await sip.start();
  return sip;
}

/** The requests a scripted peer (a fake trunk over UDP or TCP) got, in order, awaited and counted by method. */
export class ScriptedPeer<R extends { req: ParsedRequest }> {
  readonly requests: R[] = [];
  private waiters: (() => void)[] = [];

  constructor(private readonly timeoutMs: number) {}

  /** Records a request, and wakes whoever waits in next(). */
  protected received(r: R): void {
    this.requests.push(r);
    for (const w of this.waiters.splice(0)) w();
  }

  /** The `index`th request of `method` (0: the first), once it has come. */
  async next(method: string, index = 0, timeoutMs = this.timeoutMs): Promise<R> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.requests.filter((r) => r.req.method === method)[index];
      if (found !== undefined) return found;
      if (Date.now() > deadline) throw new Error(`no ${method}[${index}]; got ${this.requests.map((r) => r.req.method).join(',')}`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
  }

  count(method: string): number {
    return this.requests.filter((r) => r.req.method === method).length;
  }
}
