/**
 * A TCP trunk whose connection dies while a call is up, against a scripted TCP peer on loopback (RFC 3261 9.1,
 * 18.1.1, 18.2.2): the INVITE stays pending, its CANCEL (and a BYE) go to the same destination on a new connection,
 * and the call ends on the 487 the peer sends there or on a connection it opens itself.
 */
import net from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { placeFlashCall, type FlashCallParams } from '../../../src/engine/flash-call.js';
import type { EmbeddedSipOriginator } from '../../../src/sip/embedded-originator.js';
import type { ParsedRequest } from '../../../src/sip/message.js';
import { StreamFramer } from '../../../src/sip/parser.js';
import { recorder, responseTo, ScriptedPeer, startLoopbackUac, testLogger, trunk } from './helpers.js';

interface Received {
  req: ParsedRequest;
  /** Index of the connection it came on (0 = the first one we opened). */
  conn: number;
}

/** The far end: accepts connections, frames what arrives, answers on any connection it has. */
class TcpPeer extends ScriptedPeer<Received> {
  private readonly server = net.createServer((socket) => this.adopt(socket));
  readonly conns: net.Socket[] = [];

  constructor() {
    super(5000);
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', () => resolve()));
    const addr = this.server.address();
    if (addr === null || typeof addr === 'string') throw new Error('no address');
    return addr.port;
  }

  private adopt(socket: net.Socket): number {
    const index = this.conns.push(socket) - 1;
    const framer = new StreamFramer();
    socket.on('data', (chunk: Buffer) => {
      const { messages, error } = framer.push(chunk);
      if (error !== undefined) throw new Error('peer got malformed: ' + error);
      for (const m of messages) if (m.kind === 'request') this.received({ req: m, conn: index });
    });
    socket.on('error', () => undefined);
    return index;
  }

  /** Open a connection to the engine's listening port (the UAS side of 18.2.2), as another connection of ours. */
  async connectTo(port: number): Promise<number> {
    const socket = net.connect({ host: '127.0.0.1', port });
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return this.adopt(socket);
  }

  reply(to: Received, status: number, reason: string, options: { conn?: number; extra?: string[] } = {}): void {
    this.conns[options.conn ?? to.conn]?.write(responseTo(to.req, status, reason, options.extra));
  }

  /** The connection dies (the far end's process restarts, a NAT drops it), once what was written has left. */
  drop(conn: number): void {
    const socket = this.conns[conn];
    socket?.end(() => socket.destroy());
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

const CLI = '+441234567890';
const DEST = '+447700900123';
/** A short T1: the 64*T1 CANCEL guard is 3.2 s. */
const T1 = 50;

describe('TCP connection lost during a call (scripted TCP peer)', () => {
  let peer: TcpPeer;
  let peerPort: number;
  let sip: EmbeddedSipOriginator;

  beforeEach(async () => {
    peer = new TcpPeer();
    peerPort = await peer.listen();
    sip = await startLoopbackUac({ transports: ['udp', 'tcp'], t1Ms: T1 });
  });

  afterEach(async () => {
    await sip.stop();
    await peer.close();
  });

  const flash = (p: Partial<FlashCallParams> = {}): ReturnType<typeof placeFlashCall> =>
    placeFlashCall(sip, {
      to: DEST,
      cli: CLI,
      trunk: trunk(`sip:127.0.0.1:${peerPort};transport=tcp`),
      ringMs: 200,
      ringingTimeoutMs: 5000,
      settleMs: 64 * T1 + 1000,
      logger: testLogger,
      ...p,
    });

  it.each(['the CANCEL connection', 'a connection the far end opens'] as const)(
    'ringing, connection lost: CANCEL at ringMs on a new connection, 487 (sent on %s) ACKed, call cancelled',
    async (via487) => {
      const result = flash();
      const invite = await peer.next('INVITE');
      peer.reply(invite, 100, 'Trying');
      peer.reply(invite, 180, 'Ringing');
      peer.drop(invite.conn);
      const cancel = await peer.next('CANCEL');
      expect(cancel.conn).not.toBe(invite.conn);
      expect(cancel.req.via.branch).toBe(invite.req.via.branch);
      expect(cancel.req.cseq).toEqual({ seq: invite.req.cseq.seq, method: 'CANCEL' });
      peer.reply(cancel, 200, 'OK');
      const conn = via487 === 'the CANCEL connection' ? cancel.conn : await peer.connectTo(sip.localPort);
      peer.reply(invite, 487, 'Request Terminated', { conn });
      const ack = await peer.next('ACK');
      // 17.1.1.3: the ACK goes where the INVITE went: the connection we now have to that destination.
      expect(ack.conn).toBe(cancel.conn);
      expect(ack.req.via.branch).toBe(invite.req.via.branch);
      expect(ack.req.to.tag).toBe('peer-tag');
      await expect(result).resolves.toMatchObject({ outcome: 'cancelled', rang: true, sipStatus: 487 });
      expect(peer.count('CANCEL')).toBe(1);
    },
  );

  it('a response that frames but does not parse is dropped alone: the connection, and the other calls on it, go on', async () => {
    const first = flash();
    const second = flash({ to: '+447700900124' });
    const a = await peer.next('INVITE');
    const b = await peer.next('INVITE', 1);
    expect(b.conn).toBe(a.conn);
    // A's 180 with a header name no parser takes (a bracket is not a token character, RFC 3261 25.1); its length is right.
    peer.conns[a.conn]!.write(responseTo(a.req, 180, 'Ringing', ['X-Vendor[1]: foo']));
    peer.reply(b, 180, 'Ringing');
    const cancelB = await peer.next('CANCEL');
    expect([cancelB.req.callId, cancelB.conn]).toEqual([b.req.callId, a.conn]);
    peer.reply(cancelB, 200, 'OK');
    peer.reply(b, 487, 'Request Terminated');
    await expect(second).resolves.toMatchObject({ outcome: 'cancelled', rang: true, sipStatus: 487 });
    // A's bad 180 was not taken; a good one, on the same connection, is.
    peer.reply(a, 180, 'Ringing');
    const cancelA = await peer.next('CANCEL', 1);
    expect([cancelA.req.callId, cancelA.conn]).toEqual([a.req.callId, a.conn]);
    peer.reply(cancelA, 200, 'OK');
    peer.reply(a, 487, 'Request Terminated');
    await expect(first).resolves.toMatchObject({ outcome: 'cancelled', rang: true, sipStatus: 487 });
    expect(peer.conns).toHaveLength(1);
  });

  it('an answer that cannot be framed closes the connection: every INVITE written on it is CANCELled on a new one, none goes out again, the calls fail unreachable', async () => {
    const first = flash();
    const second = flash({ to: '+447700900124' });
    const a = await peer.next('INVITE');
    const b = await peer.next('INVITE', 1);
    expect(b.conn).toBe(a.conn);
    // A's 180 with a Content-Length no framer can use: the engine cannot tell where the next message starts.
    peer.conns[a.conn]!.write(responseTo(a.req, 180, 'Ringing').replace(/Content-Length: \d+/, 'Content-Length: many'));
    const cancels = [await peer.next('CANCEL'), await peer.next('CANCEL', 1)];
    for (const [cancel, invite] of [[cancels.find((c) => c.req.callId === a.req.callId)!, a], [cancels.find((c) => c.req.callId === b.req.callId)!, b]] as const) {
      expect(cancel.conn).not.toBe(a.conn);
      expect(cancel.req.via.branch).toBe(invite.req.via.branch);
      peer.reply(cancel, 200, 'OK');
      peer.reply(invite, 487, 'Request Terminated', { conn: cancel.conn });
    }
    await peer.next('ACK');
    await peer.next('ACK', 1);
    // `early`: the far end took them, so route advance never places them again on another trunk (route-advance.ts).
    await expect(first).resolves.toMatchObject({ outcome: 'unreachable', rang: false, early: true, sipStatus: 487 });
    await expect(second).resolves.toMatchObject({ outcome: 'unreachable', rang: false, early: true, sipStatus: 487 });
    expect((await first).phrase).toMatch(/unreadable SIP.*INVITE cancelled/);
    expect([peer.count('INVITE'), peer.count('CANCEL')]).toEqual([2, 2]);
  });

  it('an unreadable answer, then a ringing 180 on a connection the far end opens: the call rang (a delivery), ended by the CANCEL already sent', async () => {
    const result = flash();
    const invite = await peer.next('INVITE');
    peer.conns[invite.conn]!.write(responseTo(invite.req, 100, 'Trying').replace(/Content-Length: \d+/, 'Content-Length: -1'));
    const cancel = await peer.next('CANCEL');
    expect(cancel.conn).not.toBe(invite.conn);
    const back = await peer.connectTo(sip.localPort);
    peer.reply(invite, 180, 'Ringing', { conn: back });
    peer.reply(cancel, 200, 'OK');
    peer.reply(invite, 487, 'Request Terminated', { conn: back });
    await peer.next('ACK');
    await expect(result).resolves.toMatchObject({ outcome: 'cancelled', rang: true, sipStatus: 487 });
    expect(peer.count('CANCEL')).toBe(1);
  });

  it('only a 100, connection lost: CANCEL at the ringing timeout on a new connection; no_ringing on the 487', async () => {
    const result = flash({ ringingTimeoutMs: 300 });
    const invite = await peer.next('INVITE');
    peer.reply(invite, 100, 'Trying');
    peer.drop(invite.conn);
    const cancel = await peer.next('CANCEL');
    expect(cancel.conn).not.toBe(invite.conn);
    peer.reply(cancel, 200, 'OK');
    peer.reply(invite, 487, 'Request Terminated', { conn: cancel.conn });
    await peer.next('ACK');
    await expect(result).resolves.toMatchObject({ outcome: 'no_ringing', rang: false, sipStatus: 487 });
  });

  it('the CANCEL\'s own connection lost before its answer: the CANCEL is sent once more, on a new connection', async () => {
    const result = flash();
    const invite = await peer.next('INVITE');
    peer.reply(invite, 180, 'Ringing');
    const first = await peer.next('CANCEL');
    expect(first.conn).toBe(invite.conn);
    peer.drop(first.conn);
    const again = await peer.next('CANCEL', 1);
    expect(again.conn).not.toBe(first.conn);
    expect(again.req.via.branch).toBe(invite.req.via.branch);
    peer.reply(again, 200, 'OK');
    peer.reply(invite, 487, 'Request Terminated', { conn: again.conn });
    await peer.next('ACK');
    await expect(result).resolves.toMatchObject({ outcome: 'cancelled', sipStatus: 487 });
    expect(peer.count('CANCEL')).toBe(2);
  });

  it('no 487 after the CANCEL on the new connection: given up 64*T1 later, no final status reported', async () => {
    const rec = recorder();
    const call = sip.originate(
      { to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${peerPort};transport=tcp`), logger: testLogger },
      rec.delegate,
    );
    const invite = await peer.next('INVITE');
    peer.reply(invite, 180, 'Ringing');
    await rec.waitFor('provisional');
    peer.drop(invite.conn);
    // The drop reaches the engine before the CANCEL is asked for.
    await new Promise((r) => setTimeout(r, 100));
    expect(rec.events.map((e) => e.type)).toEqual(['provisional']);
    call.cancel();
    const cancel = await peer.next('CANCEL');
    expect(cancel.conn).not.toBe(invite.conn);
    peer.reply(cancel, 200, 'OK');
    await rec.waitFor('ended', 64 * T1 + 3000);
    expect(rec.events.map((e) => e.type)).toEqual(['provisional', 'cancelled', 'ended']);
    expect(peer.count('ACK')).toBe(0);
  });

  it('answered call, connection lost: the BYE goes on a new connection', async () => {
    const rec = recorder();
    const call = sip.originate(
      { to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${peerPort};transport=tcp`), sdp: 'v=0\r\n', logger: testLogger },
      rec.delegate,
    );
    const invite = await peer.next('INVITE');
    peer.reply(invite, 200, 'OK', { extra: [`Contact: <sip:127.0.0.1:${peerPort};transport=tcp>`] });
    await rec.waitFor('answered');
    const ack = await peer.next('ACK');
    expect(ack.conn).toBe(invite.conn);
    peer.drop(invite.conn);
    await new Promise((r) => setTimeout(r, 100));
    const hangup = call.hangup();
    const bye = await peer.next('BYE');
    expect(bye.conn).not.toBe(invite.conn);
    expect(bye.req.to.tag).toBe('peer-tag');
    peer.reply(bye, 200, 'OK');
    await expect(hangup).resolves.toBeUndefined();
    await rec.waitFor('ended');
    expect(rec.events.map((e) => e.type)).toEqual(['answered', 'ended']);
  });
});
