/**
 * A fake drachtio-server for tests: a TCP server speaking drachtio's framed
 * wire protocol to drachtio-srf apps that connect in inbound mode, with a
 * scripted "network" behind it (test/fakes/drachtio-scenarios.ts).
 *
 *   const fake = await FakeDrachtioServer.start({ secret: 'cymru' });
 *   fake.scenario = SCENARIOS.ringCancel;           // what the trunk does with INVITEs
 *   fake.respondTo('10.0.0.5', answerWithSdp(sdp)); // requests to another Request-URI host (e.g. FreeSWITCH)
 *   fake.answerOptions('192.0.2.10:5060', { status: 405 }); // OPTIONS outside a dialog to that host (default: 200)
 *   // connect the app to 127.0.0.1:fake.port, place calls ...
 *   fake.wire();                                    // SIP requests put on the wire: INVITE, CANCEL, ACK, BYE ...
 *   await fake.waitForRequest('BYE', 2000);
 *   fake.appResponses;                              // responses the app sent (to a far-end BYE, re-INVITE ...)
 *   fake.byeFromNetwork(callId);                    // the far end of that dialog hangs up (e.g. FreeSWITCH)
 *   fake.reinvites;                                 // re-INVITEs the app sent in a dialog (answered 200 + far-end SDP)
 *   fake.dropConnections();                         // break every app connection (drachtio-server died)
 *   await fake.pause(); await fake.resume();        // refuse connections / listen again on the same port
 *   await fake.stop();
 *
 * Every frame it sends is a `<` template of test/fixtures/drachtio/admin-protocol.txt
 * filled in, and every frame an app sends must match one of its `>` templates
 * (`unexpectedFrames` lists those that do not); `exchange` keeps both, in order,
 * for comparison with a transcript (test/fixtures/drachtio/flash-ring-cancel.txt).
 *
 * Wire protocol (what drachtio-server 0.9 does; sources: drachtio-server
 * src/client.cpp processClientMessage / createResponseMsg /
 * sendSipMessageToClient, drachtio.h SipMsgData_t::toMessageFormat;
 * drachtio-srf lib/wire-protocol.js and lib/drachtio-agent.js):
 *  - frame = `<byte length>#<payload>`; payload = `<uuid>|<type>|<tokens...>[\r\n<SIP message>]`.
 *  - app → server: `authenticate|<secret>|<tags>`, `route|<verb>`, `ping`,
 *    `sip|<txn id>|<dialog id>[|<proxy>]\r\n<SIP>` (new request: both empty;
 *    CANCEL: txn id of the INVITE; in-dialog request or ACK: dialog id;
 *    response to a network request: txn id of that request).
 *  - server → app, answer to each: `<uuid>|response|<app msg uuid>|OK|...` or `|NO|<reason>`
 *    (`|NOK|<reason>` for a `sip` frame it could not act on);
 *    authenticate: `OK|<sip hostports>|<server version>`; a sent SIP request:
 *    `OK|application|<bytes>|<proto>|<addr>|<port>|<time>|<txn id>|Msg sent:|\r\n<the request as sent>`
 *    (Via, Call-ID, From tag, CSeq filled in by the server; `localhost` in From/Contact replaced by its address).
 *  - server → app, from the network: `<uuid>|sip|network|<bytes>|<proto>|<addr>|<port>|<time>|<txn id>|<dialog id>|\r\n<SIP>`
 *    (client.cpp sendSipMessageToClient with a dialog id: nothing after its trailing `|`; dialog ids are `<Call-ID>;uac`).
 *  - a request outside a dialog other than INVITE (OPTIONS) is sent like one (`OK|...|<txn id>|Msg sent:|`); its
 *    responses go up with the txn id and no dialog id (client.cpp sendSipMessageToClient(txnId, msg, meta):
 *    `|<txn id>||`); when nothing answers, sofia-sip's transaction layer does: 408 on Timer F, 503 on a
 *    transport error, both with the request's untagged To.
 *  - a 100 Trying is not passed up (no NTATAG_PASS_100 in controller.cpp); the app's CANCEL is held until the
 *    INVITE has had a response below 200, 100 included (nta.c nta_outgoing_tcancel), then sent with the INVITE's
 *    CSeq number (RFC 3261 9.1);
 *  - the 200 to a CANCEL is not passed up; non-2xx final responses are ACKed
 *    by the server's transaction layer (recorded here as a wire ACK); the ACK
 *    for a 2xx comes from the app (`sip||<dialog id>`).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { verifyDigestResponse } from '../helpers/sipp.js';
import { farEndSdp, REASONS, type DrachtioScenario, type NetworkResponse, type ProxyChallenge } from './drachtio-scenarios.js';
import { fill, fixtureBlocks, templatePattern } from './fixtures.js';

// ------------------------------------------------------------------ the fixture

const PROTOCOL = 'drachtio/admin-protocol.txt';

/** One exchange of admin-protocol.txt: the app's frame templates and the server's. */
interface Exchange {
  name: string;
  app: string[];
  server: string[];
}

function exchanges(): Exchange[] {
  return fixtureBlocks(PROTOCOL).map((b) => {
    const lines = b.text.split('\n');
    return {
      name: b.name,
      app: lines.filter((l) => l.startsWith('> ')).map((l) => l.slice(2)),
      server: lines.filter((l) => l.startsWith('< ')).map((l) => l.slice(2)),
    };
  });
}

/** The server's frame leader of exchange `name`, filled. */
export function serverLeader(name: string, values: Record<string, string | number>): string {
  const template = exchanges().find((e) => e.name === name)?.server[0];
  if (template === undefined) throw new Error(`${PROTOCOL}: no server frame in @@ ${name}`);
  const leader = fill(template, values);
  if (/\{\w+\}/.test(leader)) throw new Error(`${PROTOCOL} @@ ${name}: unfilled ${leader}`);
  return leader;
}

/** Does this frame leader (app → server, or server → app) match a template of the protocol fixture? */
export function matchesProtocol(direction: 'app' | 'server', leader: string): boolean {
  return exchanges().some((e) => e[direction].some((t) => templatePattern(t).test(leader)));
}

// ------------------------------------------------------------------ framing and parsing (pure, unit-tested)

/** `<byte length>#<payload>` */
export function encodeFrame(payload: string): Buffer {
  return Buffer.from(`${Buffer.byteLength(payload, 'utf8')}#${payload}`, 'utf8');
}

/** Splits a byte stream into frame payloads; lengths are in bytes (UTF-8). */
export class FrameDecoder {
  private buffer = Buffer.alloc(0);

  push(chunk: Buffer): string[] {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    const out: string[] = [];
    for (;;) {
      const hash = this.buffer.indexOf('#');
      if (hash <= 0) {
        if (hash === 0 || !/^\d*$/.test(this.buffer.toString('latin1', 0, Math.min(this.buffer.length, 12)))) {
          throw new Error('invalid frame: missing length specifier');
        }
        return out;
      }
      const lenText = this.buffer.toString('latin1', 0, hash);
      // client.cpp readMessageLength: at most 5 digits.
      if (!/^\d{1,5}$/.test(lenText)) throw new Error(`invalid frame length ${JSON.stringify(lenText)}`);
      const len = Number(lenText);
      if (this.buffer.length < hash + 1 + len) return out;
      out.push(this.buffer.toString('utf8', hash + 1, hash + 1 + len));
      this.buffer = this.buffer.subarray(hash + 1 + len);
    }
  }
}

export interface Frame {
  msgId: string;
  type: string;
  /** Tokens after the type, e.g. for `sip`: [txnId, dialogId]. */
  args: string[];
  /** Text after the first CRLF (a SIP message), or ''. */
  body: string;
}

export function parseFrame(payload: string): Frame {
  const eol = payload.indexOf('\r\n');
  const leader = eol === -1 ? payload : payload.slice(0, eol);
  const [msgId = '', type = '', ...args] = leader.split('|');
  return { msgId, type, args, body: eol === -1 ? '' : payload.slice(eol + 2) };
}

export interface SipHeaderLine {
  name: string;
  value: string;
}

export interface ParsedSip {
  /** Set for requests. */
  method?: string;
  uri?: string;
  /** Set for responses. */
  status?: number;
  reason?: string;
  headers: SipHeaderLine[];
  body: string;
  /** First value of a header (case-insensitive, compact forms accepted). */
  header(name: string): string | undefined;
}

const COMPACT: Record<string, string> = { v: 'via', f: 'from', t: 'to', i: 'call-id', m: 'contact', l: 'content-length', c: 'content-type' };

function canonical(name: string): string {
  const lower = name.toLowerCase();
  return COMPACT[lower] ?? lower;
}

export function parseSip(raw: string): ParsedSip {
  const split = raw.indexOf('\r\n\r\n');
  const head = split === -1 ? raw : raw.slice(0, split);
  const body = split === -1 ? '' : raw.slice(split + 4);
  const lines = head.split('\r\n');
  const start = lines.shift() ?? '';
  const headers: SipHeaderLine[] = [];
  for (const line of lines) {
    if (line === '') continue;
    if (/^[ \t]/.test(line) && headers.length > 0) {
      headers[headers.length - 1]!.value += ' ' + line.trim();
      continue;
    }
    const colon = line.indexOf(':');
    if (colon === -1) continue;
    headers.push({ name: line.slice(0, colon).trim(), value: line.slice(colon + 1).trim() });
  }
  const header = (name: string): string | undefined => headers.find((h) => canonical(h.name) === canonical(name))?.value;
  const response = /^SIP\/2\.0\s+(\d{3})\s*(.*)$/.exec(start);
  if (response) return { status: Number(response[1]), reason: response[2] ?? '', headers, body, header };
  const request = /^([A-Z]+)\s+(\S+)\s+SIP\/2\.0$/.exec(start);
  if (!request) throw new Error(`not a SIP message: ${JSON.stringify(start)}`);
  return { method: request[1], uri: request[2], headers, body, header };
}

export function serializeSip(startLine: string, headers: SipHeaderLine[], body = ''): string {
  const lines = [startLine, ...headers.filter((h) => canonical(h.name) !== 'content-length').map((h) => `${h.name}: ${h.value}`)];
  lines.push(`Content-Length: ${Buffer.byteLength(body, 'utf8')}`);
  return lines.join('\r\n') + '\r\n\r\n' + body;
}

function tagOf(value: string | undefined): string | undefined {
  return value === undefined ? undefined : /;\s*tag=([^;>\s]+)/i.exec(value)?.[1];
}

/** host and host:port of a SIP URI. */
function hostOfUri(uri: string): { host: string; hostPort: string } {
  const m = /^sips?:(?:[^@]*@)?(\[[^\]]+\]|[^:;>?]+)(?::(\d+))?/i.exec(uri);
  const host = m?.[1] ?? '';
  return { host, hostPort: m?.[2] === undefined ? host : `${host}:${m[2]}` };
}

/** The meta tokens of drachtio.h SipMsgData_t::toMessageFormat (after the source): bytes, protocol, address, port, time. */
export function msgMeta(raw: string): { bytes: number; protocol: string; address: string; port: number; time: string } {
  const now = new Date();
  const time = `${now.toISOString().slice(11, 19)}.${String(now.getMilliseconds() * 1000).padStart(6, '0')}`;
  // address/port: where a network message came from, or where the app's message went.
  return { bytes: Buffer.byteLength(raw, 'utf8'), protocol: 'udp', address: FAR_ADDR, port: FAR_PORT, time };
}

// ------------------------------------------------------------------ the server

/** A SIP request as it went on the wire (or, for `fromApp: false`, one the network sent the app). */
export interface WireRequest {
  method: string;
  uri: string;
  callId: string;
  sip: ParsedSip;
  /** Raw text as on the wire. */
  raw: string;
  /** True when the app asked for it (INVITE, CANCEL, 2xx ACK, BYE); false for the transaction layer's ACK of a non-2xx. */
  fromApp: boolean;
  at: number;
}

/**
 * Answers an INVITE to a given Request-URI host: the responses, as in a
 * scenario. May be async (a media server that must set its channel up first).
 */
export type InviteResponder = (invite: ParsedSip) => DrachtioScenario | Promise<DrachtioScenario>;

/** A responder that answers every INVITE with 100 + 200 and the given SDP (e.g. a media server). */
export function answerWithSdp(sdp: string): InviteResponder {
  return () => ({ name: 'answer with sdp', sipp: '', invite: [{ status: 100 }, { status: 200, sdp: true }], sdpBody: sdp });
}

/**
 * How an OPTIONS sent outside a dialog is answered: by the far end (`status`, To tagged), by drachtio-server's
 * transaction layer because nothing did (`local`: 408 Timer F / 503 transport error, To untagged), not at all
 * (`silent`: a hung drachtio-server), or not sent (`refuse`: NOK with that reason).
 */
export type OptionsAnswer = { status: number; delayMs?: number } | { local: 408 | 503; delayMs?: number } | { refuse: string } | 'silent';

export interface FakeDrachtioOptions {
  secret?: string;
  /** Default 0 (ephemeral). */
  port?: number;
  /** Server version announced at authentication (drachtio-srf pings only for >= v0.8.2). */
  version?: string;
}

interface InviteTxn {
  txnId: string;
  socket: Socket;
  invite: ParsedSip;
  scenario: DrachtioScenario;
  sdpBody: string | undefined;
  toTag: string;
  dialogId: string;
  final: boolean;
  cancelled: boolean;
  timers: NodeJS.Timeout[];
  /** A response below 200 (100 Trying included) came from the network: sofia sends a CANCEL only after one. */
  provisional: boolean;
  /** The app's CANCEL, held until the first provisional response (nta.c nta_outgoing_tcancel: delay_sending). */
  heldCancel: (() => void) | undefined;
}

interface DialogState {
  id: string;
  txn: InviteTxn;
  socket: Socket;
  /** The 2xx we sent (for in-dialog requests from the far end). */
  ok: ParsedSip;
  cseq: number;
  /** The 2xx came after the app's CANCEL: drachtio-server BYEs the dialog itself once the app ACKs (ACK-BYE). */
  ackBye: boolean;
}

const SIP_ADDR = '127.0.0.1';
const SIP_PORT = 5060;
const FAR_ADDR = '127.0.0.1';
const FAR_PORT = 5090;

export class FakeDrachtioServer {
  /** The scenario INVITEs follow unless a responder claims their Request-URI host. */
  scenario: DrachtioScenario | undefined;
  /** Every frame received from apps, in order. */
  readonly frames: Frame[] = [];
  /** Every frame payload sent to apps, in order. */
  readonly sentFrames: string[] = [];
  /** Frames in both directions, in order (`>` app to server, `<` server to app), whole payloads. */
  readonly exchange: { direction: '>' | '<'; payload: string }[] = [];
  /** Leaders of app frames that match no `>` template of admin-protocol.txt. */
  readonly unexpectedFrames: string[] = [];
  /**
   * false: `ping` frames get no reply at all while the TCP connection stays
   * open (a half-open connection / hung drachtio-server, as the app sees it).
   */
  answerPings = true;
  /** Responses the app sent to requests from the network (BYE, re-INVITE ...). */
  readonly appResponses: ParsedSip[] = [];
  /** Proxy-Authorization headers received after a 407 challenge, and whether the digest matched the password. */
  readonly authorizations: { callId: string; authorization: string; valid: boolean }[] = [];
  /** re-INVITEs the app sent inside a dialog (Call-ID of the dialog's INVITE, the SDP offered). */
  readonly reinvites: { callId: string; sdp: string }[] = [];
  private readonly wireLog: WireRequest[] = [];
  private readonly responders = new Map<string, InviteResponder>();
  private readonly optionsAnswers = new Map<string, OptionsAnswer>();
  private readonly sockets = new Set<Socket>();
  private readonly authenticated = new Set<Socket>();
  private readonly txns = new Map<string, InviteTxn>();
  private readonly dialogs = new Map<string, DialogState>();
  private readonly timers = new Set<NodeJS.Timeout>();
  /** Nonces issued in 407 challenges, by Call-ID. */
  private readonly nonces = new Map<string, string>();
  private server: Server;
  private listening = false;

  private constructor(
    private readonly secret: string,
    private boundPort: number,
    private readonly version: string,
  ) {
    this.server = this.createTcpServer();
  }

  static async start(opts: FakeDrachtioOptions = {}): Promise<FakeDrachtioServer> {
    const fake = new FakeDrachtioServer(opts.secret ?? 'cymru', opts.port ?? 0, opts.version ?? 'v0.9.2');
    await fake.listen();
    return fake;
  }

  get port(): number {
    return this.boundPort;
  }

  /** Apps connected and authenticated right now. */
  get clientCount(): number {
    return this.authenticated.size;
  }

  /** Route INVITEs whose Request-URI host (or host:port) is `host` (e.g. a media server's address) to `responder`. */
  respondTo(host: string, responder: InviteResponder): void {
    this.responders.set(host, responder);
  }

  /** Answer OPTIONS outside a dialog to Request-URI `host` (or host:port) this way (default: 200 from the far end). */
  answerOptions(host: string, answer: OptionsAnswer): void {
    this.optionsAnswers.set(host, answer);
  }

  /** SIP requests put on the wire, oldest first; optionally one method only. */
  wire(method?: string): WireRequest[] {
    return method === undefined ? [...this.wireLog] : this.wireLog.filter((r) => r.method === method);
  }

  async waitForRequest(method: string, timeoutMs: number, count = 1): Promise<WireRequest> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const found = this.wire(method);
      if (found.length >= count) return found[count - 1]!;
      if (Date.now() > end) throw new Error(`fake drachtio: no ${method} #${count} within ${timeoutMs} ms (saw ${this.wireLog.map((r) => r.method).join(', ')})`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  async waitForClients(n: number, timeoutMs: number): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (this.clientCount < n) {
      if (Date.now() > end) throw new Error(`fake drachtio: ${this.clientCount} clients, wanted ${n}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Break every app connection at once (as if drachtio-server crashed). */
  dropConnections(): void {
    for (const s of this.sockets) s.destroy();
  }

  /** Stop listening and drop connections: the app's reconnects are refused until resume(). */
  async pause(): Promise<void> {
    this.dropConnections();
    if (!this.listening) return;
    this.listening = false;
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Listen again on the same port. */
  async resume(): Promise<void> {
    if (this.listening) return;
    this.server = this.createTcpServer();
    await this.listen();
  }

  async stop(): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    await this.pause();
  }

  // ---------------------------------------------------------------- socket handling

  private createTcpServer(): Server {
    return createServer((socket) => {
      this.sockets.add(socket);
      const decoder = new FrameDecoder();
      socket.on('data', (chunk) => {
        let payloads: string[];
        try {
          payloads = decoder.push(chunk);
        } catch {
          socket.destroy();
          return;
        }
        for (const p of payloads) this.onFrame(socket, parseFrame(p), p);
      });
      socket.on('error', () => undefined);
      socket.on('close', () => {
        this.sockets.delete(socket);
        this.authenticated.delete(socket);
        for (const [id, txn] of this.txns) if (txn.socket === socket) this.clearTxn(id);
        for (const [id, d] of this.dialogs) if (d.socket === socket) this.dialogs.delete(id);
      });
    });
  }

  private async listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.boundPort, '127.0.0.1', () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.boundPort = (this.server.address() as AddressInfo).port;
    this.listening = true;
  }

  private send(socket: Socket, payload: string): void {
    if (socket.destroyed) return;
    this.sentFrames.push(payload);
    this.exchange.push({ direction: '<', payload });
    socket.write(encodeFrame(payload));
  }

  /** The server frame of exchange `name` (admin-protocol.txt) answering app message `msgId`, with the SIP message after it. */
  private reply(socket: Socket, name: string, msgId: string, values: Record<string, string | number> = {}, sip?: string): void {
    const leader = serverLeader(name, { uuid: randomUUID(), msgId, ...values });
    this.send(socket, sip === undefined ? leader : `${leader}\r\n${sip}`);
  }

  private refuse(socket: Socket, msgId: string, reason: string): void {
    this.reply(socket, 'sip-refused', msgId, { reason });
  }

  private later(ms: number, fn: () => void, txn?: InviteTxn): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
    txn?.timers.push(t);
  }

  private onFrame(socket: Socket, frame: Frame, payload: string): void {
    this.frames.push(frame);
    this.exchange.push({ direction: '>', payload });
    const leader = payload.split('\r\n', 1)[0] ?? '';
    if (!matchesProtocol('app', leader)) this.unexpectedFrames.push(leader);
    switch (frame.type) {
      case 'authenticate':
        if (frame.args[0] === this.secret) {
          this.authenticated.add(socket);
          this.reply(socket, 'authenticate', frame.msgId, { hostports: `udp/${SIP_ADDR}:${SIP_PORT},tcp/${SIP_ADDR}:${SIP_PORT}`, version: this.version });
        } else {
          this.reply(socket, 'authenticate-rejected', frame.msgId);
          socket.end();
        }
        return;
      case 'ping':
        // client.cpp processClientMessage: createResponseMsg(id, msg, true, "pong").
        if (this.answerPings) this.reply(socket, 'ping', frame.msgId);
        return;
      case 'route':
        this.reply(socket, 'route', frame.msgId);
        return;
      case 'remove_route':
        this.reply(socket, 'remove-route', frame.msgId);
        return;
      case 'sip':
        if (!this.authenticated.has(socket)) {
          socket.destroy();
          return;
        }
        this.onSipFromApp(socket, frame);
        return;
      default:
        // client.cpp: "Unknown message type", then the client is dropped.
        this.reply(socket, 'unknown-type', frame.msgId);
        socket.end();
    }
  }

  // ---------------------------------------------------------------- SIP from the app

  private onSipFromApp(socket: Socket, frame: Frame): void {
    const [txnId = '', dialogId = ''] = frame.args;
    let msg: ParsedSip;
    try {
      msg = parseSip(frame.body);
    } catch (err) {
      this.refuse(socket, frame.msgId, (err as Error).message);
      return;
    }
    if (msg.status !== undefined) {
      // The app's response to a request from the network.
      this.appResponses.push(msg);
      this.sent(socket, frame.msgId, frame.body, txnId);
      // A 2xx to the far end's re-INVITE: the far end ACKs it, the answer in the ACK when the 200 offered.
      if (msg.status >= 200 && msg.status < 300 && msg.header('cseq')?.endsWith('INVITE')) this.ackFromNetwork(msg);
      return;
    }
    const method = msg.method ?? '';
    if (dialogId !== '') return this.inDialogFromApp(socket, frame, msg, dialogId);
    if (txnId !== '' && method === 'CANCEL') return this.cancelFromApp(socket, frame, msg, txnId);
    if (method === 'OPTIONS') return this.optionsFromApp(socket, frame, msg);
    if (method !== 'INVITE') {
      this.refuse(socket, frame.msgId, `fake drachtio-server: ${method} outside a dialog not supported`);
      return;
    }
    this.inviteFromApp(socket, frame, msg);
  }

  private inviteFromApp(socket: Socket, frame: Frame, msg: ParsedSip): void {
    const uri = msg.uri ?? '';
    const target = hostOfUri(uri);
    const responder = this.responders.get(target.hostPort) ?? this.responders.get(target.host);
    if (responder === undefined && this.scenario?.rejectInvite !== undefined) {
      // doSendRequestOutsideDialog could not create the transaction (no transport, bad URI ...): nothing is sent.
      this.refuse(socket, frame.msgId, this.scenario.rejectInvite);
      return;
    }
    const { sent, callId } = this.stampOutsideDialog(msg);
    const invite = parseSip(sent);
    const txnId = randomUUID();
    this.record(invite, sent, true);
    this.sent(socket, frame.msgId, sent, txnId);

    if (responder === undefined) return this.startInviteTxn(socket, invite, txnId, callId, this.scenario);
    void Promise.resolve(responder(invite)).then(
      (scenario) => this.startInviteTxn(socket, invite, txnId, callId, scenario),
      () => this.startInviteTxn(socket, invite, txnId, callId, { name: 'responder failed', sipp: '', invite: [{ status: 500 }] }),
    );
  }

  /**
   * A request outside a dialog as drachtio-server puts it on the wire (doSendRequestOutsideDialog): its Via,
   * Max-Forwards and CSeq, the app's Call-ID or a new one, a From tag, `localhost` in From/Contact replaced.
   */
  private stampOutsideDialog(msg: ParsedSip): { sent: string; callId: string } {
    const method = msg.method ?? '';
    const uri = msg.uri ?? '';
    const headers = msg.headers.filter((h) => !['via', 'max-forwards', 'cseq', 'content-length'].includes(canonical(h.name)));
    const fix = (v: string): string => v.replace(/@localhost(?=[>;:\s]|$)/gi, `@${SIP_ADDR}:${SIP_PORT}`);
    let callId = msg.header('call-id');
    if (callId === undefined) {
      callId = randomBytes(12).toString('hex');
      headers.push({ name: 'Call-ID', value: callId });
    }
    // drachtio-server supplies a From when the app gives none (as drachtio-fsmrf's INVITE to FreeSWITCH).
    if (!headers.some((h) => canonical(h.name) === 'from')) headers.push({ name: 'From', value: '<sip:localhost>' });
    for (const h of headers) {
      const n = canonical(h.name);
      if (n === 'from') {
        h.value = fix(h.value);
        if (tagOf(h.value) === undefined) h.value += `;tag=${randomBytes(5).toString('hex')}`;
      }
      if (n === 'contact') h.value = fix(h.value);
    }
    if (!headers.some((h) => canonical(h.name) === 'to')) headers.push({ name: 'To', value: `<${uri}>` });
    if (!headers.some((h) => canonical(h.name) === 'contact')) headers.push({ name: 'Contact', value: `<sip:${SIP_ADDR}:${SIP_PORT}>` });
    const sent = serializeSip(
      `${method} ${uri} SIP/2.0`,
      [
        { name: 'Via', value: `SIP/2.0/UDP ${SIP_ADDR}:${SIP_PORT};branch=z9hG4bK${randomBytes(6).toString('hex')};rport` },
        { name: 'Max-Forwards', value: '70' },
        // The app's CSeq when it gives one (drachtio-srf's digest client re-sends the INVITE with CSeq + 1).
        { name: 'CSeq', value: msg.header('cseq') ?? `1 ${method}` },
        ...headers,
      ],
      msg.body,
    );
    return { sent, callId };
  }

  /** An OPTIONS outside a dialog (a keep-alive ping): sent, then answered as `answerOptions` says for its host. */
  private optionsFromApp(socket: Socket, frame: Frame, msg: ParsedSip): void {
    const target = hostOfUri(msg.uri ?? '');
    const answer = this.optionsAnswers.get(target.hostPort) ?? this.optionsAnswers.get(target.host) ?? { status: 200 };
    if (answer !== 'silent' && 'refuse' in answer) return this.refuse(socket, frame.msgId, answer.refuse);
    const { sent } = this.stampOutsideDialog(msg);
    const options = parseSip(sent);
    const txnId = randomUUID();
    this.record(options, sent, true);
    this.sent(socket, frame.msgId, sent, txnId);
    if (answer === 'silent') return;
    const status = 'local' in answer ? answer.local : answer.status;
    const to = options.header('to') ?? '';
    const headers: SipHeaderLine[] = [
      { name: 'Via', value: options.header('via') ?? '' },
      { name: 'From', value: options.header('from') ?? '' },
      // RFC 3261 8.2.6.2: the far end tags To; sofia-sip's own response keeps the request's.
      { name: 'To', value: 'local' in answer ? to : `${to};tag=${randomBytes(5).toString('hex')}` },
      { name: 'Call-ID', value: options.header('call-id') ?? '' },
      { name: 'CSeq', value: options.header('cseq') ?? '1 OPTIONS' },
    ];
    const raw = serializeSip(`SIP/2.0 ${status} ${REASONS[status] ?? 'Unknown'}`, headers);
    this.later(answer.delayMs ?? 10, () => {
      this.send(socket, `${serverLeader('sip-from-network-outside-dialog', { uuid: randomUUID(), ...msgMeta(raw), txnId })}\r\n${raw}`);
    });
  }

  private startInviteTxn(socket: Socket, invite: ParsedSip, txnId: string, callId: string, given: DrachtioScenario | undefined): void {
    if (given === undefined || socket.destroyed) return;
    const scenario = given.challenge === undefined ? given : this.challenge(invite, callId, given, given.challenge);
    const txn: InviteTxn = {
      txnId,
      socket,
      invite,
      scenario,
      sdpBody: scenario.sdpBody,
      toTag: randomBytes(5).toString('hex'),
      // sip-dialog.hpp SipDialog::getDialogId: the Call-ID and ";uac" for a dialog we started.
      dialogId: `${callId};uac`,
      final: false,
      cancelled: false,
      provisional: false,
      heldCancel: undefined,
      timers: [],
    };
    this.txns.set(txnId, txn);
    this.playResponses(txn, scenario.invite);
    if (scenario.dropConnectionAfterMs !== undefined) this.later(scenario.dropConnectionAfterMs, () => socket.destroy());
  }

  /**
   * A trunk that wants proxy digest credentials (RFC 3261 22.3, RFC 2617 3.2.2): 407 to an INVITE
   * without them; the re-sent INVITE's response digest is recomputed from the password: 403 when wrong.
   */
  private challenge(invite: ParsedSip, callId: string, scenario: DrachtioScenario, c: ProxyChallenge): DrachtioScenario {
    const authorization = invite.header('proxy-authorization');
    const nonce = this.nonces.get(callId);
    if (authorization === undefined || nonce === undefined) {
      const issued = randomBytes(8).toString('hex');
      this.nonces.set(callId, issued);
      const challenge = `Digest realm="${c.realm}", nonce="${issued}", qop="auth", algorithm=MD5`;
      return { ...scenario, invite: [{ status: 407, delayMs: 10, headers: { 'Proxy-Authenticate': challenge } }] };
    }
    const valid = verifyDigestResponse(authorization, { method: 'INVITE', username: c.username, password: c.password, realm: c.realm, nonce });
    this.authorizations.push({ callId, authorization, valid });
    return valid ? scenario : { ...scenario, invite: [{ status: 403, delayMs: 10 }] };
  }

  private cancelFromApp(socket: Socket, frame: Frame, msg: ParsedSip, txnId: string): void {
    const txn = this.txns.get(txnId);
    if (txn === undefined) {
      // sip-dialog-controller.cpp doSendCancelRequest.
      this.refuse(socket, frame.msgId, `unable to cancel unknown transaction id: ${txnId}`);
      return;
    }
    const inv = txn.invite;
    const sent = serializeSip(`CANCEL ${inv.uri ?? ''} SIP/2.0`, [
      { name: 'Via', value: inv.header('via') ?? '' },
      { name: 'Max-Forwards', value: '70' },
      { name: 'From', value: inv.header('from') ?? '' },
      { name: 'To', value: inv.header('to') ?? '' },
      { name: 'Call-ID', value: inv.header('call-id') ?? '' },
      // RFC 3261 9.1: the INVITE's CSeq number (2 after a digest retry), method CANCEL.
      { name: 'CSeq', value: `${cseqNumber(inv)} CANCEL` },
      ...msg.headers.filter((h) => !['via', 'max-forwards', 'from', 'to', 'call-id', 'cseq', 'content-length'].includes(canonical(h.name))),
    ]);
    this.sent(socket, frame.msgId, sent, randomUUID());
    const onWire = (): void => {
      this.record(parseSip(sent), sent, true);
      if (txn.final || txn.cancelled) return;
      txn.cancelled = true;
      const onCancel = txn.scenario.onCancel ?? { status: 487 };
      if (onCancel === 'ignore') return;
      // The far end stops its scripted responses; it answers the INVITE as the scenario says.
      for (const t of txn.timers) clearTimeout(t);
      txn.timers = [];
      this.playResponses(txn, [onCancel]);
    };
    // nta.c nta_outgoing_tcancel: "CANCEL may be sent only after a provisional response has been received" (RFC 3261
    // 9.1); sofia holds it and sends it on the first response below 200, a 100 Trying included (outgoing_recv).
    if (txn.provisional || txn.final) onWire();
    else txn.heldCancel = onWire;
  }

  private inDialogFromApp(socket: Socket, frame: Frame, msg: ParsedSip, dialogId: string): void {
    const dialog = this.dialogs.get(dialogId);
    if (dialog === undefined) {
      // sip-dialog-controller.cpp doSendRequestInsideDialog: no dialog for that id (a UAC dialog exists only
      // after a 200 or a reliable 18x). drachtio-srf ACKs every final response; for a non-2xx the server's
      // transaction layer already did (RFC 3261 17.1.1.3), and the ACK finds no dialog.
      const what = msg.method === 'ACK' ? 'ACK for non-success final response is automatically generated by server' : 'unable to find dialog for dialog id provided';
      this.refuse(socket, frame.msgId, `Server error: ${what}`);
      return;
    }
    const method = msg.method ?? '';
    const inv = dialog.txn.invite;
    const okTo = dialog.ok.header('to') ?? '';
    const target = /<([^>]+)>/.exec(dialog.ok.header('contact') ?? '')?.[1] ?? inv.uri ?? '';
    const cseq = method === 'ACK' ? '1 ACK' : `${++dialog.cseq} ${method}`;
    const sent = serializeSip(
      `${method} ${target} SIP/2.0`,
      [
        { name: 'Via', value: `SIP/2.0/UDP ${SIP_ADDR}:${SIP_PORT};branch=z9hG4bK${randomBytes(6).toString('hex')};rport` },
        { name: 'Max-Forwards', value: '70' },
        { name: 'From', value: inv.header('from') ?? '' },
        { name: 'To', value: okTo },
        { name: 'Call-ID', value: inv.header('call-id') ?? '' },
        { name: 'CSeq', value: cseq },
        ...msg.headers.filter((h) => !['via', 'max-forwards', 'from', 'to', 'call-id', 'cseq', 'content-length'].includes(canonical(h.name))),
      ],
      msg.body,
    );
    const parsed = parseSip(sent);
    this.record(parsed, sent, true);
    const txnId = method === 'ACK' ? '' : randomUUID();
    this.sent(socket, frame.msgId, sent, txnId);
    if (method === 'ACK' && dialog.ackBye) return this.ackBye(dialog, target);
    if (method === 'BYE') {
      this.dialogs.delete(dialogId);
      this.later(10, () => this.sendResponseFor(socket, parsed, 200, txnId, dialogId));
    }
    if (method === 'INVITE') {
      // A re-INVITE from the app (e.g. drachtio-fsmrf's endpoint.modify): by default the far end answers 200 with its SDP.
      this.reinvites.push({ callId: inv.header('call-id') ?? '', sdp: msg.body });
      const how = dialog.txn.scenario.onReinvite;
      const nth = this.reinvites.filter((r) => r.callId === (inv.header('call-id') ?? '')).length;
      const answer = (typeof how === 'function' ? how(nth) : how) ?? { status: 200 };
      if (answer === 'ignore') return;
      const sdp = answer.status === 200 ? (dialog.txn.sdpBody ?? farEndSdp(40_000, dialog.cseq)) : '';
      this.later(answer.delayMs ?? 10, () => this.sendResponseFor(socket, parsed, answer.status, txnId, dialogId, sdp));
    }
  }

  // ---------------------------------------------------------------- the network

  private playResponses(txn: InviteTxn, steps: readonly NetworkResponse[]): void {
    let at = 0;
    for (const step of steps) {
      at += step.delayMs ?? 0;
      this.later(at, () => this.networkResponse(txn, step), txn);
    }
  }

  private networkResponse(txn: InviteTxn, step: NetworkResponse): void {
    if (txn.final || txn.socket.destroyed) return;
    const status = step.status;
    const inv = txn.invite;
    const body = step.sdp ? (txn.sdpBody ?? farEndSdp()) : '';
    const headers: SipHeaderLine[] = [
      { name: 'Via', value: inv.header('via') ?? '' },
      { name: 'From', value: inv.header('from') ?? '' },
      { name: 'To', value: status > 100 && !step.local ? `${inv.header('to') ?? ''};tag=${txn.toTag}` : (inv.header('to') ?? '') },
      { name: 'Call-ID', value: inv.header('call-id') ?? '' },
      { name: 'CSeq', value: inv.header('cseq') ?? '1 INVITE' },
    ];
    if (status > 100 && status < 300) headers.push({ name: 'Contact', value: `<sip:farend@${FAR_ADDR}:${FAR_PORT}>` });
    for (const [name, value] of Object.entries(step.headers ?? {})) headers.push({ name, value });
    if (body !== '') headers.push({ name: 'Content-Type', value: 'application/sdp' });
    const raw = serializeSip(`SIP/2.0 ${status} ${step.reason ?? REASONS[status] ?? 'Unknown'}`, headers, body);
    if (status < 200) {
      txn.provisional = true;
      // drachtio-server's agent is made without NTATAG_PASS_100 (controller.cpp nta_agent_create), so sofia's
      // outgoing_recv drops a 100 Trying before the app: the app never sees one (sofia's transaction does).
      if (status !== 100) this.sendFromNetwork(txn.socket, raw, txn.txnId, txn.dialogId);
      const held = txn.heldCancel;
      txn.heldCancel = undefined;
      held?.();
      return;
    }
    // Every response to an INVITE carries the dialog id (processResponseOutsideDialog: the IIP's dialog).
    this.sendFromNetwork(txn.socket, raw, txn.txnId, txn.dialogId);
    txn.final = true;
    this.clearTxn(txn.txnId);
    if (status >= 300) {
      // RFC 3261 17.1.1.3: the client transaction ACKs a non-2xx itself.
      const ack = serializeSip(`ACK ${inv.uri ?? ''} SIP/2.0`, [
        { name: 'Via', value: inv.header('via') ?? '' },
        { name: 'Max-Forwards', value: '70' },
        { name: 'From', value: inv.header('from') ?? '' },
        { name: 'To', value: `${inv.header('to') ?? ''};tag=${txn.toTag}` },
        { name: 'Call-ID', value: inv.header('call-id') ?? '' },
        { name: 'CSeq', value: `${cseqNumber(inv)} ACK` },
      ]);
      this.record(parseSip(ack), ack, false);
      return;
    }
    const dialog: DialogState = { id: txn.dialogId, txn, socket: txn.socket, ok: parseSip(raw), cseq: 1, ackBye: txn.cancelled };
    this.dialogs.set(dialog.id, dialog);
    const { remoteByeAfterMs, reinviteAfterMs } = txn.scenario;
    if (reinviteAfterMs !== undefined) {
      this.later(reinviteAfterMs, () => this.requestFromNetwork(dialog, 'INVITE', txn.scenario.reinviteWithoutSdp ? '' : farEndSdp(40_000, 2)));
    }
    if (remoteByeAfterMs !== undefined) {
      this.later(remoteByeAfterMs, () => {
        if (this.dialogs.delete(dialog.id)) this.requestFromNetwork(dialog, 'BYE');
      });
    }
  }

  /**
   * sip-dialog-controller.cpp: a 200 to an INVITE the app had CANCELled marks the dialog (doAckBye);
   * when the app's ACK goes out, notifyTerminateStaleDialog(dlg, true) sends drachtio-server's own BYE
   * (Reason: ACK-BYE due to cancel race condition), hands it to the app as an `unsolicited` request
   * (source `application`, route_request_inside_dialog) and clears the dialog: a BYE from the app
   * afterwards finds none.
   */
  private ackBye(dialog: DialogState, target: string): void {
    const inv = dialog.txn.invite;
    const bye = serializeSip(`BYE ${target} SIP/2.0`, [
      { name: 'Via', value: `SIP/2.0/UDP ${SIP_ADDR}:${SIP_PORT};branch=z9hG4bK${randomBytes(6).toString('hex')};rport` },
      { name: 'Max-Forwards', value: '70' },
      { name: 'From', value: inv.header('from') ?? '' },
      { name: 'To', value: dialog.ok.header('to') ?? '' },
      { name: 'Call-ID', value: inv.header('call-id') ?? '' },
      { name: 'CSeq', value: `${++dialog.cseq} BYE` },
      { name: 'Reason', value: 'SIP ;cause=200 ;text="ACK-BYE due to cancel race condition"' },
    ]);
    this.record(parseSip(bye), bye, false);
    this.dialogs.delete(dialog.id);
    this.send(dialog.socket, `${serverLeader('unsolicited-request', { uuid: randomUUID(), ...msgMeta(bye), dialogId: dialog.id })}\r\n${bye}`);
  }

  /** The far end's ACK to the app's 2xx for its re-INVITE (same CSeq number), with the scenario's answer when it offered. */
  private ackFromNetwork(ok: ParsedSip): void {
    for (const dialog of this.dialogs.values()) {
      if (dialog.txn.invite.header('call-id') !== ok.header('call-id')) continue;
      const answer = dialog.txn.scenario.reinviteWithoutSdp && ok.body ? dialog.txn.scenario.reinviteWithoutSdp.ackSdp : '';
      this.requestFromNetwork(dialog, 'ACK', answer, cseqNumber(ok));
      return;
    }
  }

  /** An in-dialog request from the far end (BYE, re-INVITE, ACK: `cseq` its INVITE's). */
  private requestFromNetwork(dialog: DialogState, method: string, body = '', cseq?: string): void {
    const inv = dialog.txn.invite;
    const headers: SipHeaderLine[] = [
      { name: 'Via', value: `SIP/2.0/UDP ${FAR_ADDR}:${FAR_PORT};branch=z9hG4bK${randomBytes(6).toString('hex')}` },
      { name: 'Max-Forwards', value: '70' },
      { name: 'From', value: dialog.ok.header('to') ?? '' },
      { name: 'To', value: inv.header('from') ?? '' },
      { name: 'Call-ID', value: inv.header('call-id') ?? '' },
      { name: 'CSeq', value: `${cseq ?? ++dialog.cseq} ${method}` },
      { name: 'Contact', value: `<sip:farend@${FAR_ADDR}:${FAR_PORT}>` },
    ];
    if (body !== '') headers.push({ name: 'Content-Type', value: 'application/sdp' });
    const target = /<([^>]+)>/.exec(inv.header('contact') ?? '')?.[1] ?? `sip:${SIP_ADDR}:${SIP_PORT}`;
    const raw = serializeSip(`${method} ${target} SIP/2.0`, headers, body);
    this.sendFromNetwork(dialog.socket, raw, randomUUID(), dialog.id);
  }

  /** The far end's response to a request the app sent (e.g. 200 to BYE, or to a re-INVITE with an SDP). */
  private sendResponseFor(socket: Socket, request: ParsedSip, status: number, txnId: string, dialogId: string, sdp = ''): void {
    const headers: SipHeaderLine[] = ['via', 'from', 'to', 'call-id', 'cseq'].map((n) => ({
      name: n === 'call-id' ? 'Call-ID' : n === 'cseq' ? 'CSeq' : n[0]!.toUpperCase() + n.slice(1),
      value: request.header(n) ?? '',
    }));
    if (sdp !== '') {
      headers.push({ name: 'Contact', value: `<sip:farend@${FAR_ADDR}:${FAR_PORT}>` }, { name: 'Content-Type', value: 'application/sdp' });
    }
    this.sendFromNetwork(socket, serializeSip(`SIP/2.0 ${status} ${REASONS[status] ?? 'OK'}`, headers, sdp), txnId, dialogId);
  }

  /**
   * The far end of the dialog whose INVITE had this Call-ID hangs up (BYE from
   * the network), e.g. FreeSWITCH after `hangup`. False when no such dialog.
   */
  byeFromNetwork(callId: string): boolean {
    for (const dialog of this.dialogs.values()) {
      if (dialog.txn.invite.header('call-id') !== callId) continue;
      this.dialogs.delete(dialog.id);
      this.requestFromNetwork(dialog, 'BYE');
      return true;
    }
    return false;
  }

  private sendFromNetwork(socket: Socket, raw: string, txnId: string, dialogId: string): void {
    // client.cpp BaseClient::sendSipMessageToClient(transactionId, dialogId, ...): a trailing '|' after the dialog id.
    this.send(socket, `${serverLeader('sip-from-network', { uuid: randomUUID(), ...msgMeta(raw), txnId, dialogId })}\r\n${raw}`);
  }

  /** The OK for a SIP message the app had sent (sip-dialog-controller.cpp: `s + "|" + txnId + "|Msg sent:|" + CRLF + msg`). */
  private sent(socket: Socket, msgId: string, raw: string, txnId: string): void {
    this.reply(socket, 'sip-sent', msgId, { ...msgMeta(raw), sentTxnId: txnId }, raw);
  }

  private record(sip: ParsedSip, raw: string, fromApp: boolean): void {
    this.wireLog.push({ method: sip.method ?? '', uri: sip.uri ?? '', callId: sip.header('call-id') ?? '', sip, raw, fromApp, at: Date.now() });
  }

  private clearTxn(txnId: string): void {
    const txn = this.txns.get(txnId);
    if (txn === undefined) return;
    // Keep the transaction findable for a late CANCEL until it is final.
    if (!txn.final && !txn.socket.destroyed) return;
    for (const t of txn.timers) {
      clearTimeout(t);
      this.timers.delete(t);
    }
    this.txns.delete(txnId);
  }
}

/** The CSeq number of a request (RFC 3261 8.1.1.5): a CANCEL and the ACK of a non-2xx carry the INVITE's. */
function cseqNumber(m: ParsedSip): string {
  return /^\s*(\d+)/.exec(m.header('cseq') ?? '')?.[1] ?? '1';
}
