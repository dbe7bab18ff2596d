import { once } from 'node:events';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { fixtureBlocks, fixtureHeaders, fixtureText } from '../../fakes/fixtures.js';
import { FakeFreeswitch, switchUrlEncode } from '../../fakes/freeswitch-esl.js';

/**
 * The fake FreeSWITCH's event socket against the transcripts in
 * test/fixtures/esl/ (derived from mod_event_socket.c; see their headers):
 * auth, api / bgapi replies, event framing (Content-Length, plain and json),
 * filters, the outbound `connect` / `sendmsg` / hang-up exchange. Messages are
 * split here by our own reader (header block up to a blank line, then
 * Content-Length bytes of body), not by the fake's code.
 */

const CORE = '2f0b9c3e-5a7d-4e1f-9c44-0d8e6a1b7c35';

/** Reads an ESL byte stream: exact byte counts, or whole messages. */
class EslReader {
  private buf = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  closed = false;

  constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.waiter?.();
    });
    socket.on('error', () => undefined);
  }

  private async until(cond: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!cond()) {
      if (this.closed) throw new Error(`connection closed waiting for ${what}; have ${JSON.stringify(this.buf.toString())}`);
      const left = end - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; have ${JSON.stringify(this.buf.toString())}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.waiter = undefined;
    }
  }

  /** The next `n` bytes, as text. */
  async bytes(n: number): Promise<string> {
    await this.until(() => this.buf.length >= n, `${n} bytes`);
    const out = this.buf.subarray(0, n).toString('utf8');
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** The next message: its header lines (raw values) and body. */
  async message(): Promise<{ raw: string; headers: Record<string, string>; body: string }> {
    await this.until(() => this.buf.indexOf('\n\n') >= 0, 'a header block');
    const end = this.buf.indexOf('\n\n');
    const head = this.buf.subarray(0, end).toString('utf8');
    const headers = parseLines(head);
    const len = Number(headers['Content-Length'] ?? 0);
    await this.until(() => this.buf.length >= end + 2 + len, `a ${len}-byte body`);
    const body = this.buf.subarray(end + 2, end + 2 + len).toString('utf8');
    const raw = this.buf.subarray(0, end + 2 + len).toString('utf8');
    this.buf = this.buf.subarray(end + 2 + len);
    return { raw, headers, body };
  }

  async closedByPeer(): Promise<void> {
    await this.until(() => this.closed, 'the close');
  }
}

/** `Name: value` lines (values raw, not decoded). */
function parseLines(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const i = line.indexOf(': ');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 2);
  }
  return out;
}

/** A text/event-plain body: URL-encoded header lines, then (after a blank line) the event body. */
function parsePlainEvent(serialized: string): { headers: Record<string, string>; names: string[]; body: string } {
  const split = serialized.indexOf('\n\n');
  const raw = parseLines(serialized.slice(0, split));
  const headers = Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, decodeURIComponent(v)]));
  return { headers, names: Object.keys(raw), body: serialized.slice(split + 2) };
}

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function startFake(opts: Partial<ConstructorParameters<typeof FakeFreeswitch>[0]> = {}): Promise<FakeFreeswitch> {
  const fs = new FakeFreeswitch({ sipAddress: '127.0.0.1:5080', coreUuid: CORE, ...opts });
  await fs.listen();
  cleanups.push(() => fs.close());
  return fs;
}

async function connect(port: number): Promise<EslReader> {
  const socket = createConnection({ host: '127.0.0.1', port });
  cleanups.push(() => socket.destroy());
  await once(socket, 'connect');
  return new EslReader(socket);
}

describe('ESL fixtures', () => {
  it("every frame in the transcripts carries its body's byte length", () => {
    const frames = fixtureBlocks('esl/inbound-session.txt').filter((b) => b.role === 'server' && /^Content-Length: /m.test(b.text));
    expect(frames.length).toBeGreaterThanOrEqual(4);
    for (const f of frames) {
      const split = f.text.indexOf('\n\n');
      const declared = Number(parseLines(f.text.slice(0, split))['Content-Length']);
      expect(Buffer.byteLength(f.text.slice(split + 2)), f.name).toBe(declared);
    }
  });
});

describe("FreeSWITCH's URL-encoding of header values", () => {
  it('escapes exactly what switch_url_encode does, as in published captures (davec82/freeswitch-outboundsocket)', () => {
    // Pairs as they appear decoded / on the wire in test/support/fs_events.ex of that repository.
    expect(switchUrlEncode('sofia/internal/1000@192.168.1.146:5060')).toBe('sofia/internal/1000%40192.168.1.146%3A5060');
    expect(switchUrlEncode('INVITE, ACK, OPTIONS')).toBe('INVITE,%20ACK,%20OPTIONS');
    expect(switchUrlEncode('+OK\n')).toBe('%2BOK%0A');
    expect(switchUrlEncode('SIP/2.0/UDP 192.168.1.176:5060;branch=z9hG4bK3')).toBe('SIP/2.0/UDP%20192.168.1.176%3A5060%3Bbranch%3Dz9hG4bK3');
    expect(switchUrlEncode('"222" <sip:222@192.168.1.146;user=phone>')).toBe('%22222%22%20%3Csip%3A222%40192.168.1.146%3Buser%3Dphone%3E');
    expect(switchUrlEncode('v=0\r\nm=audio 10120 RTP/AVP 0 8\r\n')).toBe('v%3D0%0D%0Am%3Daudio%2010120%20RTP/AVP%200%208%0D%0A');
    // Bytes above '~' one by one; modesl's decodeURIComponent gets the text back.
    expect(switchUrlEncode('é')).toBe('%C3%A9');
    expect(decodeURIComponent(switchUrlEncode('Votre code : 4, 8 – é'))).toBe('Votre code : 4, 8 – é');
  });
});

describe('fake FreeSWITCH, inbound event socket', () => {
  it('answers the recorded inbound session byte for byte: auth, plain and json events, api, bgapi, filter, exit', async () => {
    const fs = await startFake();
    const esl = await connect(fs.port);
    for (const block of fixtureBlocks('esl/inbound-session.txt')) {
      if (block.role === 'client') {
        esl.socket.write(block.text);
        continue;
      }
      // The HEARTBEAT is FreeSWITCH's own (every 20 s): send one when the transcript has it.
      if (block.name === 'heartbeat-json') fs.heartbeat(2);
      expect(await esl.bytes(Buffer.byteLength(block.text)), block.name).toBe(block.text);
    }
    await esl.closedByPeer();
  });

  it('refuses everything but auth before authentication, and hangs up on a wrong password', async () => {
    const fs = await startFake();
    const esl = await connect(fs.port);
    expect((await esl.message()).headers['Content-Type']).toBe('auth/request');
    esl.socket.write('api status\n\n');
    expect((await esl.message()).raw).toBe('Content-Type: command/reply\nReply-Text: -ERR command not found\n\n');
    esl.socket.write('auth WrongPassword\n\n');
    expect((await esl.message()).raw).toBe('Content-Type: command/reply\nReply-Text: -ERR invalid\n\n');
    const bye = await esl.message();
    expect(bye.headers['Content-Type']).toBe('text/disconnect-notice');
    expect(bye.body).toBe(fixtureText('esl/replies.txt', 'disconnect-notice-body'));
    await esl.closedByPeer();
    expect(fs.apiCommands).toEqual([]);
  });

  it('frames plain events with URL-encoded values that decode to the event, and delivers only subscribed events', async () => {
    const fs = await startFake({ maxSessions: 250 });
    const esl = await connect(fs.port);
    await esl.message();
    esl.socket.write('auth ClueCon\n\n');
    await esl.message();
    esl.socket.write('event plain BACKGROUND_JOB\n\n');
    expect((await esl.message()).headers['Reply-Text']).toBe('+OK event listener enabled plain');
    fs.heartbeat(5); // not subscribed: nothing
    esl.socket.write('event plain HEARTBEAT\n\n');
    expect((await esl.message()).headers['Reply-Text']).toBe('+OK event listener enabled plain');
    fs.heartbeat(7);
    const frame = await esl.message();
    expect(frame.headers['Content-Type']).toBe('text/event-plain');
    expect(Buffer.byteLength(frame.body)).toBe(Number(frame.headers['Content-Length']));
    const event = parsePlainEvent(frame.body);
    // switch_url_encode: spaces are escaped, commas are not.
    expect(frame.body).toContain('Up-Time: 0%20years,%200%20days');
    const template = fixtureHeaders('esl/events.txt', 'HEARTBEAT');
    expect(event.names).toEqual(Object.keys(template));
    expect(event.headers).toMatchObject({ 'Event-Name': 'HEARTBEAT', 'Core-UUID': CORE, 'Session-Count': '7', 'Max-Sessions': '250', 'Up-Time': template['Up-Time'] });
    expect(event.body).toBe('');
  });

  it('answers api with api/response and bgapi with a Job-UUID reply then a BACKGROUND_JOB carrying the output', async () => {
    const fs = await startFake();
    const esl = await connect(fs.port);
    await esl.message();
    esl.socket.write('auth ClueCon\n\nevent json BACKGROUND_JOB\n\n');
    await esl.message();
    expect((await esl.message()).headers['Reply-Text']).toBe('+OK event listener enabled json');

    esl.socket.write('api sofia status\n\n');
    const api = await esl.message();
    expect(api.headers['Content-Type']).toBe('api/response');
    expect(api.body).toMatch(/drachtio_mrf\tprofile\t +sip:mod_sofia@127\.0\.0\.1:5080\tRUNNING/);

    // No Job-UUID from the client: FreeSWITCH makes one and echoes it in the reply and the event.
    esl.socket.write('bgapi sofia status\n\n');
    const reply = await esl.message();
    const job = reply.headers['Job-UUID']!;
    expect(job).toMatch(/^[0-9a-f-]{36}$/);
    expect(reply.raw).toBe(`Content-Type: command/reply\nReply-Text: +OK Job-UUID: ${job}\nJob-UUID: ${job}\n\n`);
    const frame = await esl.message();
    expect(frame.headers['Content-Type']).toBe('text/event-json');
    const event = JSON.parse(frame.body) as Record<string, string>;
    expect(event).toMatchObject({ 'Event-Name': 'BACKGROUND_JOB', 'Job-UUID': job, 'Job-Command': 'sofia', 'Job-Command-Arg': 'status', _body: api.body });
    expect(event['Content-Length']).toBe(String(Buffer.byteLength(api.body)));
    expect(fs.apiCommands).toEqual(['sofia status', 'sofia status']);
  });

  it('applies a filter to the events it delivers', async () => {
    const fs = await startFake();
    const esl = await connect(fs.port);
    await esl.message();
    esl.socket.write('auth ClueCon\n\nevent plain HEARTBEAT\n\nfilter Core-UUID not-this-core\n\n');
    for (let i = 0; i < 3; i++) await esl.message();
    fs.heartbeat(1); // filtered out
    esl.socket.write(`filter delete Core-UUID not-this-core\n\nfilter Core-UUID ${CORE}\n\n`);
    expect((await esl.message()).headers['Reply-Text']).toBe('+OK filter deleted. [Core-UUID][not-this-core]');
    expect((await esl.message()).headers['Reply-Text']).toBe(`+OK filter added. [Core-UUID]=[${CORE}]`);
    fs.heartbeat(3);
    const event = parsePlainEvent((await esl.message()).body);
    expect(event.headers['Session-Count']).toBe('3');
  });
});

describe('fake FreeSWITCH, outbound event socket (a channel dials the app)', () => {
  async function appListener(): Promise<{ server: Server; port: number; accepted: Promise<Socket> }> {
    const server = createServer();
    const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanups.push(() => new Promise((r) => server.close(r)));
    const address = server.address();
    return { server, port: typeof address === 'object' && address ? address.port : 0, accepted };
  }

  it('connect → CHANNEL_DATA; sendmsg execute → +OK, CHANNEL_EXECUTE, CHANNEL_EXECUTE_COMPLETE with our Event-UUID; hangup → events, disconnect notice, close', async () => {
    const fs = await startFake({ playbackMs: 20 });
    const app = await appListener();
    const channel = await fs.answerInvite({ callId: 'call-1@test', userAgent: 'drachtio-fsmrf', eslOutbound: `127.0.0.1:${app.port}` });
    const socket = await app.accepted;
    cleanups.push(() => socket.destroy());
    const esl = new EslReader(socket);

    socket.write('connect\n\n');
    const data = await esl.message();
    const decoded = Object.fromEntries(Object.entries(data.headers).map(([k, v]) => [k, decodeURIComponent(v)]));
    expect(Object.keys(data.headers)).toEqual(Object.keys(fixtureHeaders('esl/events.txt', 'CHANNEL_DATA')));
    expect(decoded).toMatchObject({
      'Event-Name': 'CHANNEL_DATA',
      'Content-Type': 'command/reply',
      'Reply-Text': '+OK\n',
      'Socket-Mode': 'async',
      Control: 'full',
      'Unique-ID': channel.uuid,
      'Channel-Unique-ID': channel.uuid,
      variable_sip_call_id: 'call-1@test',
      'variable_sip_h_X-esl-outbound': `127.0.0.1:${app.port}`,
    });
    expect(decoded.variable_rtp_local_sdp_str).toBe(channel.localSdp);

    socket.write('myevents\n\n');
    expect((await esl.message()).raw).toBe('Content-Type: command/reply\nReply-Text: +OK Events Enabled\n\n');
    socket.write('event plain CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HANGUP CHANNEL_CALLSTATE\n\n');
    expect((await esl.message()).headers['Reply-Text']).toBe('+OK event listener enabled plain');

    socket.write('sendmsg no-such-uuid\ncall-command: execute\nexecute-app-name: playback\nexecute-app-arg: x.wav\n\n');
    expect((await esl.message()).headers['Reply-Text']).toBe('-ERR invalid session id [no-such-uuid]');

    // modesl's execute(): the arg goes raw (not URL-encoded), Event-UUID is ours.
    const arg = 'file_string:///p/en/intro.wav!silence_stream://350!/p/en/4.wav';
    socket.write(`sendmsg ${channel.uuid}\ncall-command: execute\nexecute-app-name: playback\nexecute-app-arg: ${arg}\nEvent-UUID: ev-1\n\n`);
    expect((await esl.message()).raw).toBe('Content-Type: command/reply\nReply-Text: +OK\n\n');
    const started = parsePlainEvent((await esl.message()).body);
    expect(started.names).toEqual(Object.keys(fixtureHeaders('esl/events.txt', 'CHANNEL_EXECUTE')));
    expect(started.headers).toMatchObject({ 'Event-Name': 'CHANNEL_EXECUTE', Application: 'playback', 'Application-Data': arg, 'Application-UUID': 'ev-1' });
    const done = parsePlainEvent((await esl.message()).body);
    expect(done.headers).toMatchObject({
      'Event-Name': 'CHANNEL_EXECUTE_COMPLETE',
      'Unique-ID': channel.uuid,
      'Application-UUID': 'ev-1',
      'Application-Response': 'FILE PLAYED',
    });
    expect(fs.playbackFiles(channel.uuid)).toEqual(['/p/en/intro.wav', 'silence_stream://350', '/p/en/4.wav']);

    socket.write(`api uuid_dump ${channel.uuid}\n\n`);
    const dump = await esl.message();
    expect(dump.headers['Content-Type']).toBe('api/response');
    // A serialized event: URL-encoded header lines and a blank line, as in the published uuid_dump capture.
    expect(dump.body.endsWith('\n\n')).toBe(true);
    expect(parsePlainEvent(dump.body).headers).toMatchObject({ 'Unique-ID': channel.uuid, variable_rtp_local_sdp_str: channel.localSdp });

    socket.write(`sendmsg ${channel.uuid}\ncall-command: hangup\nhangup-cause: NORMAL_CLEARING\n\n`);
    expect((await esl.message()).headers['Reply-Text']).toBe('+OK');
    const callstate = parsePlainEvent((await esl.message()).body);
    expect(callstate.headers).toMatchObject({ 'Event-Name': 'CHANNEL_CALLSTATE', 'Channel-Call-State': 'HANGUP', 'Hangup-Cause': 'NORMAL_CLEARING' });
    expect(parsePlainEvent((await esl.message()).body).headers['Event-Name']).toBe('CHANNEL_HANGUP');
    const bye = await esl.message();
    // send_disconnect on a controlled session names it (as in the published capture).
    expect(bye.raw).toBe(
      `Content-Type: text/disconnect-notice\nControlled-Session-UUID: ${channel.uuid}\nContent-Disposition: disconnect\nContent-Length: ${Buffer.byteLength(bye.body)}\n\n${fixtureText('esl/replies.txt', 'disconnect-notice-body')}`,
    );
    await esl.closedByPeer();
    expect(fs.hangups).toEqual([channel.uuid]);
  });
});
