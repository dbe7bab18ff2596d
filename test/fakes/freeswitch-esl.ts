import { randomUUID } from 'node:crypto';
import type { NetworkResponse } from './drachtio-scenarios.js';
import type { FakeDrachtioServer } from './drachtio-server.js';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import {
  BACKGROUND_JOB,
  CHANNEL_CALLSTATE_HANGUP,
  CHANNEL_DATA,
  CHANNEL_EXECUTE,
  CHANNEL_EXECUTE_COMPLETE,
  CHANNEL_HANGUP,
  FS_LOCAL_SDP,
  HEARTBEAT,
  SOFIA_STATUS,
  SOFIA_STATUS_NO_MRF,
  UUID_DUMP,
  eslFrame,
  fill,
  fillHeaders,
  replyText,
} from './freeswitch-scenarios.js';

/**
 * A fake FreeSWITCH speaking the real event-socket wire protocol
 * (mod_event_socket), over loopback:
 *  - inbound (we are the server on "8021"): auth/request → `auth` →
 *    "+OK accepted"; `api` → api/response; `bgapi` → command/reply then a
 *    BACKGROUND_JOB event; `event plain|json ...`; `filter`; `exit`;
 *    HEARTBEAT events on demand;
 *  - outbound (FreeSWITCH dials the app, as the `socket` dialplan app does
 *    for fsmrf's `X-esl-outbound` header): `connect` → CHANNEL_DATA reply;
 *    `sendmsg` with `call-command: execute` → "+OK", CHANNEL_EXECUTE, then
 *    CHANNEL_EXECUTE_COMPLETE carrying the command's Event-UUID as
 *    Application-UUID; `api uuid_break|uuid_dump`; `hangup` → HANGUP
 *    events, the SIP BYE (through a hook), disconnect notice, close.
 * Every frame, reply text and event comes from test/fixtures/esl/ (through
 * freeswitch-scenarios.ts); test/unit/fakes/freeswitch-esl.test.ts checks the
 * fake's bytes against the transcripts there.
 */

export interface ExecutedApp {
  channel: string;
  app: string;
  arg: string;
}

export interface FakeFreeswitchOptions {
  password?: string;
  /** host:port of the fake's SIP side, shown in `sofia status` (where fsmrf sends its INVITEs). */
  sipAddress: string;
  /** Leave out the drachtio_mrf profile from `sofia status`. */
  noMrfProfile?: boolean;
  /** How long one `playback`/`speak` lasts unless broken. */
  playbackMs?: number;
  /** Max-Sessions reported in HEARTBEAT. */
  maxSessions?: number;
  /** Core-UUID of this FreeSWITCH (default random). */
  coreUuid?: string;
}

/**
 * Splits the first line (command) and `Name: value` headers of one client
 * message. Values are taken as sent: mod_event_socket's read_packet does not
 * URL-decode what clients send (modesl sends execute-app-arg raw).
 */
function parseCommand(text: string): { command: string; headers: Record<string, string> } {
  const [command = '', ...lines] = text.split('\n');
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const i = line.indexOf(':');
    if (i > 0) headers[line.slice(0, i)] = line.slice(i + 1).trimStart();
  }
  return { command: command.trim(), headers };
}

/** `Name: value` lines, values URL-encoded as FreeSWITCH does in events and channel data. */
/**
 * FreeSWITCH's switch_url_encode (switch_utils.c): every byte below ' ' or above '~', and
 * each of `\r\n "#%&+:;<=>?@[\]^\`{|}`, as %XX (upper-case hex); everything else as is
 * (so `,` `/` `-` `.` stay, as in published captures: `INVITE,%20ACK`, `RTP/AVP`).
 */
export function switchUrlEncode(value: string): string {
  const unsafe = '\r\n "#%&+:;<=>?@[\\]^`{|}';
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    const ch = String.fromCharCode(byte);
    out += byte < 0x20 || byte > 0x7e || unsafe.includes(ch) ? `%${byte.toString(16).toUpperCase().padStart(2, '0')}` : ch;
  }
  return out;
}

function encodeHeaders(headers: Record<string, string>): string {
  return Object.entries(headers)
    .map(([k, v]) => `${k}: ${switchUrlEncode(v)}\n`)
    .join('');
}

/**
 * One event as mod_event_socket frames it: switch_event_serialize (plain: URL-encoded
 * `Name: value` lines, a body after its Content-Length and a blank line) or
 * switch_event_serialize_json (every header a string, the body as `_body`).
 */
export function serializeEvent(format: 'plain' | 'json', headers: Record<string, string>, body?: string): string {
  let serialized: string;
  if (format === 'json') {
    serialized = JSON.stringify(body === undefined ? headers : { ...headers, 'Content-Length': String(Buffer.byteLength(body)), _body: body });
  } else {
    serialized =
      body === undefined
        ? `${encodeHeaders(headers)}\n`
        : `${encodeHeaders({ ...headers, 'Content-Length': String(Buffer.byteLength(body)) })}\n${body}`;
  }
  return eslFrame('event', { format }, serialized);
}

class EslSocket {
  format: 'plain' | 'json' | undefined;
  readonly events = new Set<string>();
  filter: { header: string; value: string } | undefined;
  authed = false;
  private buf = '';

  constructor(
    readonly socket: Socket,
    private readonly onCommand: (c: EslSocket, command: string, headers: Record<string, string>) => void,
  ) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      this.buf += d;
      for (;;) {
        const end = this.buf.indexOf('\n\n');
        if (end < 0) break;
        const msg = this.buf.slice(0, end);
        this.buf = this.buf.slice(end + 2);
        const { command, headers } = parseCommand(msg);
        if (command) this.onCommand(this, command, headers);
      }
    });
    socket.on('error', () => undefined);
  }

  write(s: string): void {
    if (!this.socket.destroyed) this.socket.write(s);
  }

  reply(text: string): void {
    this.write(eslFrame('command-reply', { text }));
  }

  apiResponse(body: string): void {
    // api_exec: an empty api output is sent as "-ERR no reply\n".
    this.write(eslFrame('api-response', {}, body === '' ? '-ERR no reply\n' : body));
  }

  wants(name: string, headers: Record<string, string>): boolean {
    if (!this.format || !(this.events.has(name) || this.events.has('all') || this.events.has('ALL'))) return false;
    return !this.filter || headers[this.filter.header] === this.filter.value;
  }

  event(headers: Record<string, string>, body?: string): void {
    this.write(serializeEvent(this.format ?? 'plain', headers, body));
  }

  /** send_disconnect: on a channel's (outbound) socket it names the controlled session. */
  disconnect(sessionUuid?: string): void {
    const body = replyText('disconnect-notice-body');
    this.write(sessionUuid === undefined ? eslFrame('disconnect-notice', {}, body) : eslFrame('disconnect-notice-session', { uuid: sessionUuid }, body));
    this.socket.end();
  }
}

interface RunningApp {
  app: string;
  arg: string;
  appUuid: string;
  started: number;
  timer?: NodeJS.Timeout;
}

export class FakeChannel {
  readonly uuid = randomUUID();
  readonly vars = new Map<string, string>();
  remoteSdp = '';
  conn: EslSocket | undefined;
  hungUp = false;
  private running: RunningApp | undefined;
  private readonly queue: RunningApp[] = [];
  readonly mediaPort: number;

  constructor(
    private readonly fs: FakeFreeswitch,
    readonly callId: string,
    readonly userAgent: string,
    readonly eslOutbound: string,
  ) {
    this.mediaPort = 30000 + Math.floor(Math.random() * 5000) * 2;
  }

  get values(): Record<string, string> {
    const [remoteIp = '', remotePort = ''] = /c=IN IP4 (\S+)[\s\S]*m=audio (\d+)/.exec(this.remoteSdp)?.slice(1) ?? [];
    return {
      core: this.fs.coreUuid,
      uuid: this.uuid,
      sip: this.fs.opts.sipAddress,
      callId: this.callId,
      userAgent: this.userAgent,
      eslOutbound: this.eslOutbound,
      mediaIp: '127.0.0.1',
      mediaPort: String(this.mediaPort),
      localSdp: this.localSdp,
      remoteSdp: this.remoteSdp,
      remoteIp,
      remotePort,
    };
  }

  get localSdp(): string {
    return fill(FS_LOCAL_SDP, { mediaIp: '127.0.0.1', mediaPort: this.mediaPort });
  }

  emit(template: Record<string, string>, values: Record<string, string | number> = {}): void {
    const headers = fillHeaders(template, { ...this.values, ...values });
    const name = headers['Event-Name'] ?? '';
    if (this.conn?.wants(name, headers)) this.conn.event(headers);
  }

  /** `sendmsg` call-command execute: apps run one after another, like the channel's dialplan thread. */
  execute(app: string, arg: string, appUuid: string): void {
    this.fs.executed.push({ channel: this.uuid, app, arg });
    this.queue.push({ app, arg, appUuid, started: 0 });
    if (!this.running) this.next();
  }

  private next(): void {
    const a = this.queue.shift();
    this.running = a;
    if (!a || this.hungUp) return;
    a.started = Date.now();
    this.emit(CHANNEL_EXECUTE, { app: a.app, arg: a.arg, appUuid: a.appUuid });
    switch (a.app) {
      case 'set':
      case 'export': {
        const i = a.arg.indexOf('=');
        if (i > 0) this.vars.set(a.arg.slice(0, i), a.arg.slice(i + 1));
        return this.complete(a, '_none_');
      }
      case 'playback':
      case 'speak':
        if (a.app === 'playback' && this.fs.failPlayback) return this.complete(a, this.fs.failPlayback);
        a.timer = setTimeout(() => this.complete(a, a.app === 'playback' ? 'FILE PLAYED' : '+OK'), this.fs.opts.playbackMs ?? 50);
        return;
      case 'hangup':
        this.complete(a, '+OK');
        return this.hangup(a.arg || 'NORMAL_CLEARING');
      default:
        return this.complete(a, '+OK');
    }
  }

  private complete(a: RunningApp, response: string): void {
    if (this.running !== a) return;
    clearTimeout(a.timer);
    const ms = Date.now() - a.started;
    this.emit(CHANNEL_EXECUTE_COMPLETE, {
      app: a.app,
      arg: a.arg,
      appUuid: a.appUuid,
      response,
      playbackMs: ms,
      playbackSeconds: Math.floor(ms / 1000),
    });
    this.running = undefined;
    setImmediate(() => this.next());
  }

  /** uuid_break [all]: ends the current playback now ("FILE PLAYED"); `all` also drops what is queued. */
  break(all: boolean): void {
    this.fs.breaks.push(this.uuid);
    if (all) this.queue.length = 0;
    const a = this.running;
    if (a && (a.app === 'playback' || a.app === 'speak')) this.complete(a, a.app === 'playback' ? 'FILE PLAYED' : '+OK');
  }

  /** The channel hangs up: HANGUP events, BYE on the SIP side, then the outbound socket closes. */
  hangup(cause: string): void {
    if (this.hungUp) return;
    this.hungUp = true;
    this.queue.length = 0;
    clearTimeout(this.running?.timer);
    this.running = undefined;
    this.emit(CHANNEL_CALLSTATE_HANGUP, { cause });
    this.emit(CHANNEL_HANGUP, { cause });
    this.fs.hangups.push(this.uuid);
    this.fs.onHangup?.(this);
    const conn = this.conn;
    setTimeout(() => conn?.disconnect(this.uuid), 20);
    this.fs.channels.delete(this.uuid);
  }

  /** Test teardown: timers off, socket closed, no events. */
  abort(): void {
    this.hungUp = true;
    this.queue.length = 0;
    clearTimeout(this.running?.timer);
    this.conn?.socket.destroy();
  }

  /** FreeSWITCH dials the app's listener (the `socket` app of fsmrf's dialplan, "async full"). */
  dial(): Promise<void> {
    const [host = '127.0.0.1', port = '0'] = this.eslOutbound.split(':');
    return new Promise<void>((resolve, reject) => {
      const socket = createConnection({ host, port: Number(port) }, () => resolve());
      socket.once('error', reject);
      this.conn = new EslSocket(socket, (c, command, headers) => this.fs.handle(c, command, headers, this));
      this.fs.outboundSockets.add(socket);
      socket.on('close', () => this.fs.outboundSockets.delete(socket));
    });
  }
}

export class FakeFreeswitch {
  readonly coreUuid: string;
  /** Every app executed on any channel, in order. */
  readonly executed: ExecutedApp[] = [];
  /** Every `api` command received (inbound and outbound sockets). */
  readonly apiCommands: string[] = [];
  readonly breaks: string[] = [];
  readonly hangups: string[] = [];
  readonly channels = new Map<string, FakeChannel>();
  /** Inbound connections accepted (a reconnect shows as a new one). */
  inboundConnections = 0;
  /** Make every `playback` fail with this Application-Response (e.g. "FILE NOT FOUND"). */
  failPlayback: string | undefined;
  /** Called when a channel hangs up: the SIP side sends its BYE here. */
  onHangup: ((channel: FakeChannel) => void) | undefined;
  /** behindDrachtio(): answer fsmrf's INVITE with this status instead of a channel. */
  failInvite: number | undefined;
  /**
   * behindDrachtio(): the answer to endpoint.modify's re-INVITE (default 200 with the SDP; 'ignore': none ever); a
   * function: the answer to the nth re-INVITE of the channel (from 1; undefined: the default).
   */
  reinvite: NetworkResponse | 'ignore' | ((nth: number) => NetworkResponse | 'ignore' | undefined) | undefined;
  readonly outboundSockets = new Set<Socket>();
  private readonly inbound = new Set<EslSocket>();
  private server: Server | undefined;
  private sessionCount = 0;

  constructor(readonly opts: FakeFreeswitchOptions) {
    this.coreUuid = opts.coreUuid ?? randomUUID();
  }

  async listen(port = 0, host = '127.0.0.1'): Promise<number> {
    const server = createServer((socket) => {
      this.inboundConnections++;
      const c = new EslSocket(socket, (conn, command, headers) => this.handle(conn, command, headers, undefined));
      this.inbound.add(c);
      socket.on('close', () => this.inbound.delete(c));
      c.write(eslFrame('auth-request'));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    this.server = server;
    return this.port;
  }

  get port(): number {
    const a = this.server?.address();
    return a && typeof a === 'object' ? a.port : 0;
  }

  /** Every playback file, in order, split out of file_string:// lists and playback_delimiter lists. */
  playbackFiles(channel?: string): string[] {
    return this.executed
      .filter((e) => e.app === 'playback' && (!channel || e.channel === channel))
      .flatMap((e) => {
        const arg = e.arg.startsWith('file_string://') ? e.arg.slice('file_string://'.length) : e.arg;
        return arg.split('!');
      });
  }

  /** A HEARTBEAT to every subscribed inbound connection; MediaServer takes its session counters from it. */
  heartbeat(sessions = this.sessionCount): void {
    this.sessionCount = sessions;
    const headers = fillHeaders(HEARTBEAT, { core: this.coreUuid, sessions, maxSessions: this.opts.maxSessions ?? 1000 });
    for (const c of this.inbound) if (c.authed && c.wants('HEARTBEAT', headers)) c.event(headers);
  }

  /** Drops every inbound event-socket connection (FreeSWITCH restarted / network cut); calls keep theirs. */
  dropInbound(): void {
    for (const c of this.inbound) c.socket.destroy();
  }

  /** Answers fsmrf's INVITE: a channel that dials the app's X-esl-outbound listener. */
  async answerInvite(p: { callId: string; userAgent: string; eslOutbound: string }): Promise<FakeChannel> {
    const ch = new FakeChannel(this, p.callId, p.userAgent, p.eslOutbound);
    this.channels.set(ch.uuid, ch);
    await ch.dial();
    return ch;
  }

  channelByCallId(callId: string): FakeChannel | undefined {
    return [...this.channels.values()].find((c) => c.callId === callId);
  }

  private api(line: string, channel: FakeChannel | undefined): string {
    this.apiCommands.push(line);
    const [cmd = '', ...args] = line.split(/\s+/);
    const target = (uuid: string | undefined): FakeChannel | undefined => (uuid ? this.channels.get(uuid) : undefined) ?? channel;
    switch (cmd) {
      case 'sofia':
        return fill(this.opts.noMrfProfile ? SOFIA_STATUS_NO_MRF : SOFIA_STATUS, { sip: this.opts.sipAddress });
      case 'status':
        return `UP 0 years, 0 days, 0 hours, 1 minute\n${this.channels.size} session(s) - peak 1\n`;
      case 'uuid_break': {
        const ch = target(args[0]);
        if (!ch) return '-ERR No such channel!\n';
        ch.break(args[1] === 'all');
        return '+OK\n';
      }
      case 'uuid_kill': {
        const ch = target(args[0]);
        if (!ch) return '-ERR No such channel!\n';
        ch.hangup(args[1] ?? 'NORMAL_CLEARING');
        return '+OK\n';
      }
      case 'uuid_dump': {
        const ch = target(args[0]);
        if (!ch) return '-ERR No such channel!\n';
        // switch_event_serialize of the channel's event: header lines, then a blank line.
        return encodeHeaders(fillHeaders(UUID_DUMP, ch.values)) + '\n';
      }
      case 'uuid_set_media_stats':
        return '+OK\n';
      default:
        return replyText('api-unknown', { command: cmd });
    }
  }

  /** One client command on an inbound socket (channel undefined) or on a channel's outbound socket (mod_event_socket parse_command). */
  handle(c: EslSocket, command: string, headers: Record<string, string>, channel: FakeChannel | undefined): void {
    const [verb = '', ...rest] = command.split(' ');
    const args = rest.join(' ');
    if (verb === 'exit') {
      c.reply(replyText('bye'));
      return c.disconnect(channel?.uuid);
    }
    if (!channel && !c.authed) {
      if (verb !== 'auth') return c.reply(replyText('unknown'));
      if (args === (this.opts.password ?? 'ClueCon')) {
        c.authed = true;
        return c.reply(replyText('auth-ok'));
      }
      c.reply(replyText('auth-err'));
      return c.disconnect();
    }
    switch (verb) {
      case 'connect':
        if (!channel) return c.reply(replyText('unknown'));
        return c.write(encodeHeaders(fillHeaders(CHANNEL_DATA, channel.values)) + '\n');
      case 'api':
        return c.apiResponse(this.api(args, channel));
      case 'bgapi': {
        const job = headers['Job-UUID'] ?? randomUUID();
        c.write(eslFrame('bgapi-reply', { job }));
        const body = this.api(args, channel);
        const [jobCommand = '', ...jobArgs] = args.split(' ');
        const ev = fillHeaders(BACKGROUND_JOB, { core: this.coreUuid, job, command: jobCommand, arg: jobArgs.join(' ') });
        if (jobArgs.length === 0) delete ev['Job-Command-Arg'];
        if (c.wants('BACKGROUND_JOB', ev)) c.event(ev, body);
        return;
      }
      case 'event': {
        const [format = '', ...names] = args.split(' ');
        const explicit = format === 'plain' || format === 'json';
        // "CUSTOM a::b c::d" subscribes subclasses; event names are the words that are not subclasses.
        const keywords = (explicit ? names : [format, ...names]).filter((n) => n !== '' && !n.includes('::'));
        if (keywords.length === 0) return c.reply(replyText('event-no-keywords'));
        if (explicit) c.format = format;
        c.format ??= 'plain';
        for (const n of keywords) c.events.add(n);
        return c.reply(replyText('event-ok', { format: c.format }));
      }
      case 'filter': {
        const [header = '', ...value] = args.split(' ');
        if (header === 'delete') {
          const [name = '', ...v] = value;
          c.filter = undefined;
          return c.reply(replyText('filter-deleted', { header: name, value: v.join(' ') }));
        }
        c.filter = { header, value: value.join(' ') };
        return c.reply(replyText('filter-ok', { header, value: c.filter.value }));
      }
      case 'myevents':
        return c.reply(replyText('myevents-ok'));
      case 'linger':
        return c.reply(replyText('linger-ok'));
      case 'nolinger':
        return c.reply(replyText('nolinger-ok'));
      case 'nixevent':
        return c.reply(replyText('nixevent-ok'));
      case 'noevents':
        return c.reply(replyText('noevents-ok'));
      case 'sendmsg': {
        const ch = (args ? this.channels.get(args) : undefined) ?? (!args || args === channel?.uuid ? channel : undefined);
        if (!ch) return c.reply(replyText('sendmsg-bad-session', { uuid: args }));
        c.reply(replyText('sendmsg-ok'));
        if (headers['call-command'] === 'execute') {
          ch.execute(headers['execute-app-name'] ?? '', headers['execute-app-arg'] ?? '', headers['Event-UUID'] ?? randomUUID());
        } else if (headers['call-command'] === 'hangup') {
          ch.hangup(headers['hangup-cause'] ?? 'NORMAL_CLEARING');
        }
        return;
      }
      default:
        return c.reply(replyText('unknown'));
    }
  }

  async close(): Promise<void> {
    for (const ch of this.channels.values()) ch.abort();
    for (const s of this.outboundSockets) s.destroy();
    for (const c of this.inbound) c.socket.destroy();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

// ---------------------------------------------------------------------------
// The SIP side: FreeSWITCH behind the fake drachtio-server.

/**
 * Puts a FakeFreeswitch behind a FakeDrachtioServer as production wires them:
 * fsmrf's INVITE to `sip:drachtio@<sipAddress>` (drachtio's wire protocol, through
 * the app's drachtio connection) makes the channel dial the app's X-esl-outbound
 * listener and answer 200 with FreeSWITCH's SDP (or `failInvite`); the re-INVITE of
 * endpoint.modify is answered as `reinvite` says; FreeSWITCH's hang-up comes back
 * as its BYE through drachtio.
 */
export function behindDrachtio(fs: FakeFreeswitch, drachtio: FakeDrachtioServer): void {
  drachtio.respondTo(fs.opts.sipAddress, async (invite) => {
    if (fs.failInvite !== undefined) {
      return { name: 'freeswitch refuses the INVITE', sipp: '', invite: [{ status: 100 }, { status: fs.failInvite, delayMs: 10 }] };
    }
    // drachtio/docker-drachtio-freeswitch-mrf dialplan/mrf.xml: the drachtio_mrf profile's `mrf` context runs
    // `socket ${sip_h_X-esl-outbound} async full` only for User-Agent ^drachtio-fsmrf:(.*)$; any other
    // INVITE matches no extension (404 No Route).
    if (!/^drachtio-fsmrf:/.test(invite.header('user-agent') ?? '') || !invite.header('x-esl-outbound')) {
      return { name: 'no mrf extension matches', sipp: '', invite: [{ status: 100 }, { status: 404, delayMs: 10 }] };
    }
    const ch = await fs.answerInvite({
      callId: invite.header('call-id') ?? '',
      userAgent: invite.header('user-agent') ?? '',
      eslOutbound: invite.header('x-esl-outbound') ?? '',
    });
    return {
      name: 'freeswitch answers',
      sipp: '',
      invite: [{ status: 100 }, { status: 200, sdp: true }],
      sdpBody: ch.localSdp,
      ...(fs.reinvite !== undefined ? { onReinvite: fs.reinvite } : {}),
    };
  });
  const previous = fs.onHangup;
  fs.onHangup = (ch) => {
    previous?.(ch);
    drachtio.byeFromNetwork(ch.callId);
  };
}
