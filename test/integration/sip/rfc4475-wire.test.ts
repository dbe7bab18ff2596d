/**
 * All 49 RFC 4475 torture messages over the wire: each is sent, unchanged, as
 * one UDP datagram from a test socket on 127.0.0.1 to the real embedded SIP
 * stack, and what comes back (or does not) is what a UA that only originates
 * calls must answer:
 *
 *  - a request with a To tag matching no dialog of ours: 481 (RFC 3261 12.2.2);
 *  - an out-of-dialog INVITE that parses: 405 with Allow (RFC 3261 8.2.1);
 *  - another method we know and do not take (REGISTER, MESSAGE): 405 with Allow, as in a dialog;
 *  - a method we do not know (intmeth, esc02's RE%47IST%45R): 501 with Allow (21.5.2);
 *  - OPTIONS: 200, unless the Request-URI scheme is not sip/sips (416, 8.2.2.1)
 *    or Require names an option tag (420 with Unsupported, 8.2.2.3);
 *  - a response matching no transaction (unreason, noreason, bcast): dropped;
 *  - a message that does not parse: no response at all.
 *
 * Every response must itself parse, copy Call-ID/CSeq/From and the Via fields
 * (the top one stamped with received/rport), and add a To tag; it must go to
 * the source address, to the source port when the top Via asks for rport
 * (RFC 3581), else to the Via port (RFC 3261 18.2.2), and never to a Via host
 * or to 255.255.255.255. Every datagram the engine sends is observed through a
 * pass-through spy on dgram's send (the stack itself is real). Afterwards the
 * stack must still answer OPTIONS and place a real call against SIPp, and it
 * must not have logged an error.
 *
 * zeromf (3.3.11) is an OPTIONS with Max-Forwards: 0. Max-Forwards is a
 * proxy's check (RFC 3261 16.3 step 2: 483 when it would forward); a UAS
 * (8.2) has no such check and answers the request itself, and 11.1 expects an
 * OPTIONS with Max-Forwards 0 to be answered by the element it reaches. So this
 * UA answers 200. Same for an INVITE with Max-Forwards 0: 405 (not 483), as
 * the method check comes first and 483 is not a UAS response.
 */
import dgram from 'node:dgram';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { EmbeddedSipOriginator } from '../../../src/sip/embedded-originator.js';
import { getHeader, getHeaders, type ParsedMessage } from '../../../src/sip/message.js';
import { parseMessage, parseVia } from '../../../src/sip/parser.js';
import { allTorture } from '../../helpers/rfc4475.js';
import { freePort, killSipp, recorder, startSipp, trunk, type SippProcess } from './helpers.js';

/** The port every top Via without rport in the set names or implies (RFC 3261 18.2.2: responses go there). */
const VIA_PORT = 5060;

/** Expected status per message; null: nothing is sent back. */
const EXPECTED: Record<string, number | null> = {
  // 3.1.1, 3.2.1: valid
  wsinv: 481, // it has a To tag: a request in a dialog we do not have (12.2.2), whatever the method
  intmeth: 501,
  esc01: 405,
  escnull: 405,
  esc02: 501, // the method is RE%47IST%45R, not REGISTER
  lwsdisp: 200,
  longreq: 405,
  dblreq: 405, // one response: the second request in the datagram is ignored
  semiuri: 200,
  transports: 200,
  mpart01: 405,
  unreason: null, // responses matching no transaction
  noreason: null,
  badbranch: 200,
  // 3.1.2: invalid; those the parser tolerates (SEMANTIC_ONLY) are answered by method
  badinv01: null,
  clerr: null,
  ncl: null,
  scalar02: 405,
  scalarlg: null,
  quotbal: null,
  ltgtruri: null,
  lwsruri: null,
  lwsstart: null,
  trws: null,
  escruri: 405,
  baddate: 405,
  regbadct: 405,
  badaspec: 200,
  baddn: null,
  badvers: null,
  mismatch01: null,
  mismatch02: null,
  bigcode: null,
  // 3.3, 3.4: application layer
  insuf: null,
  unkscm: 416,
  novelsc: 416,
  unksm2: 405,
  bext01: 420,
  invut: 405, // 405 comes before 415 (8.2.1 before 8.2.3)
  regaut01: 405,
  multi01: null,
  mcl01: null,
  bcast: null, // 200 OK matching no transaction: dropped, never forwarded to the broadcast Via
  zeromf: 200, // see the header comment
  cparam01: 405,
  cparam02: 405,
  regescrt: 405,
  sdp01: 405,
  inv2543: 405,
};

interface Datagram {
  data: Buffer;
  port: number; // the test socket port it arrived on
}

interface EngineSend {
  address: string;
  port: number;
}

function bindUdp(port: number): Promise<dgram.Socket> {
  const s = dgram.createSocket('udp4');
  return new Promise((resolve, reject) => {
    s.once('error', (err) =>
      reject(new Error(`cannot bind 127.0.0.1:${port} (${err.message}); this test needs it to see responses sent to the Via port`)),
    );
    s.bind(port, '127.0.0.1', () => resolve(s));
  });
}

/** Where a dgram send goes: (msg, [offset, length,] port, address, cb) or a connected socket's peer. */
function destinationOf(socket: dgram.Socket, args: unknown[]): EngineSend {
  for (let i = 1; i + 1 < args.length; i++) {
    if (typeof args[i] === 'number' && typeof args[i + 1] === 'string') return { port: args[i] as number, address: args[i + 1] as string };
  }
  const peer = socket.remoteAddress();
  return { port: peer.port, address: peer.address };
}

describe('RFC 4475 torture messages over UDP to the embedded SIP stack', () => {
  const logs: { level: number; msg: string }[] = [];
  const logger = pino(
    { level: 'warn' },
    new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const line of chunk.toString().split('\n').filter(Boolean)) logs.push(JSON.parse(line) as { level: number; msg: string });
        done();
      },
    }),
  );
  let sip: EmbeddedSipOriginator;
  let src: dgram.Socket;
  let viaSock: dgram.Socket;
  let srcPort: number;
  const received: Datagram[] = [];
  const sends: EngineSend[] = [];
  let sipp: SippProcess | undefined;

  beforeAll(async () => {
    src = await bindUdp(0);
    srcPort = src.address().port;
    viaSock = await bindUdp(VIA_PORT);
    for (const s of [src, viaSock]) s.on('message', (data, _r) => received.push({ data, port: s.address().port }));
    const original = dgram.Socket.prototype.send;
    vi.spyOn(dgram.Socket.prototype, 'send').mockImplementation(function (this: dgram.Socket, ...args: unknown[]) {
      if (this !== src && this !== viaSock) sends.push(destinationOf(this, args));
      return (original as (...a: unknown[]) => void).apply(this, args);
    } as typeof original);
    sip = new EmbeddedSipOriginator({
      listen: { host: '127.0.0.1', port: 0, transports: ['udp'] },
      timers: { t1Ms: 500, t2Ms: 4000, t4Ms: 5000 },
      userAgent: 'fv-torture',
      logger,
    });
    await sip.start();
  });

  afterAll(async () => {
    vi.restoreAllMocks();
    killSipp(sipp);
    await sip?.stop();
    src?.close();
    viaSock?.close();
  });

  let fences = 0;
  /**
   * Send `data`, then an OPTIONS fence; the engine handles datagrams in order,
   * so once the fence's 200 is back everything `data` caused has been sent.
   * Returns the datagrams and engine sends caused by `data` alone.
   */
  async function exchange(data: Buffer): Promise<{ got: Datagram[]; sent: EngineSend[] }> {
    const fenceId = `fence-${++fences}`;
    const r0 = received.length;
    const s0 = sends.length;
    src.send(data, sip.localPort, '127.0.0.1');
    src.send(options(fenceId), sip.localPort, '127.0.0.1');
    const deadline = Date.now() + 3000;
    const isFence = (d: Datagram): boolean => d.data.includes(`Call-ID: ${fenceId}\r\n`);
    while (!received.slice(r0).some(isFence)) {
      if (Date.now() > deadline) throw new Error(`no answer to the fence OPTIONS ${fenceId}`);
      await new Promise((r) => setTimeout(r, 5));
    }
    await new Promise((r) => setTimeout(r, 20)); // a datagram to the other socket may be handled a tick later
    const got = received.slice(r0).filter((d) => !isFence(d));
    // The fence's own response is the engine's last send in the window.
    const sent = sends.slice(s0, sends.length - 1);
    return { got, sent };
  }

  function options(callId: string, extra = ''): string {
    return (
      `OPTIONS sip:fv@127.0.0.1:${sip.localPort} SIP/2.0\r\n` +
      `Via: SIP/2.0/UDP 127.0.0.1:${srcPort};branch=z9hG4bK${callId};rport\r\n` +
      `From: <sip:probe@127.0.0.1>;tag=${callId}\r\nTo: <sip:fv@127.0.0.1>\r\n` +
      `Call-ID: ${callId}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n${extra}Content-Length: 0\r\n\r\n`
    );
  }

  it('the expectation table covers exactly the 49 messages', () => {
    expect(Object.keys(EXPECTED).sort()).toEqual(
      allTorture()
        .map((t) => t.name)
        .sort(),
    );
  });

  it.each(allTorture().map((t) => [t.name, t] as const))('%s', async (name, { data }) => {
    const expected = EXPECTED[name];
    const parsed = parseMessage(data);
    // The table and the parser agree on what is answerable at all.
    expect(parsed.ok && parsed.message.kind === 'request', parsed.ok ? '' : parsed.reason).toBe(expected !== null);
    const { got, sent } = await exchange(data);
    if (expected === null || !parsed.ok || parsed.message.kind !== 'request') {
      expect(got.map((d) => d.data.toString('latin1', 0, 60))).toEqual([]);
      expect(sent).toEqual([]);
      return;
    }
    const request = parsed.message;
    const rport = 'rport' in request.via.params;
    const port = rport ? srcPort : (request.via.port ?? 5060);
    expect(rport || port === VIA_PORT, 'fixture Via port must be the one this test listens on').toBe(true);
    expect(sent).toEqual([{ address: '127.0.0.1', port }]);
    expect(got).toHaveLength(1);
    expect(got[0]!.port).toBe(port);

    const r = parseMessage(got[0]!.data);
    if (!r.ok) throw new Error(`the engine's response does not parse: ${r.reason}`);
    const response: ParsedMessage = r.message;
    expect(response.kind === 'response' && response.status).toBe(expected);
    expect(response.callId).toBe(request.callId);
    expect(response.cseq).toEqual(request.cseq);
    expect(getHeader(response, 'from')).toBe(getHeader(request, 'from'));
    expect(response.from).toEqual(request.from);
    // To: the same field, with a tag added unless it had one.
    expect(response.to.uri).toBe(request.to.uri);
    expect(response.to.displayName).toBe(request.to.displayName);
    if (request.to.tag !== undefined) {
      expect(getHeader(response, 'to')).toBe(getHeader(request, 'to'));
    } else {
      expect(response.to.tag).toMatch(/^[0-9a-f]+$/);
      expect(getHeader(response, 'to')).toBe(`${getHeader(request, 'to')};tag=${response.to.tag}`);
    }
    // Via: all of them, in order; the top one stamped (received: its host is not the source, or it asked for rport
    // (RFC 3581 4: then always); rport: the source port).
    const reqVias = getHeaders(request, 'via');
    const resVias = getHeaders(response, 'via');
    expect(resVias.slice(1)).toEqual(reqVias.slice(1));
    const top = parseVia(resVias[0]!);
    expect(top).toMatchObject({ transport: request.via.transport, host: request.via.host, port: request.via.port, branch: request.via.branch });
    expect(top?.params['received']).toBe(request.via.host === '127.0.0.1' && !rport ? undefined : '127.0.0.1');
    if (rport) expect(top?.params['rport']).toBe(String(srcPort));
    if (expected === 405 || expected === 501) expect(getHeader(response, 'allow')).toBe('INVITE, ACK, CANCEL, BYE, OPTIONS');
    if (expected === 420) expect(getHeader(response, 'unsupported')).toBe('nothing');
  });

  it('never sent anything to a Via host, the broadcast address or anywhere but 127.0.0.1', () => {
    expect(sends.length).toBeGreaterThan(49); // the fences and the answers
    expect(sends.filter((s) => s.address !== '127.0.0.1')).toEqual([]);
  });

  it('afterwards: answers OPTIONS, places a call against SIPp, and logged no error', async () => {
    const { got } = await exchange(Buffer.from(options('after-torture', 'Require: 100rel\r\n')));
    expect(got.map((d) => d.data.toString('latin1').split('\r\n')[0])).toEqual(['SIP/2.0 420 Bad Extension']);

    const port = await freePort();
    sipp = await startSipp(['-sn', 'uas', '-m', '1'], port, 'udp');
    const rec = recorder();
    const call = sip.originate(
      { to: '+447700900123', from: '+441234567890', trunk: trunk(`sip:127.0.0.1:${port}`, { dummySdp: true }), logger },
      rec.delegate,
    );
    await rec.waitFor('answered');
    await call.hangup();
    await rec.waitFor('ended');
    expect(await sipp.exit).toBe(0);
    expect(logs.filter((l) => l.level >= 50)).toEqual([]);
    expect(logs.some((l) => l.msg === 'error handling SIP message')).toBe(false);
  });
});
