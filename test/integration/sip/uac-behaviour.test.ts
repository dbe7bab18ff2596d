/**
 * UAC core behaviour against a scripted UDP peer (a fake trunk on loopback):
 * request construction, RFC 3261 9.1 CANCEL rules, crossed CANCEL/2xx, 2xx
 * retransmissions, digest retry limits, in-dialog requests.
 */
import { createHash } from 'node:crypto';
import dgram from 'node:dgram';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { EmbeddedSipOriginator } from '../../../src/sip/embedded-originator.js';
import { getHeader, getHeaders, type ParsedRequest } from '../../../src/sip/message.js';
import { parseMessage } from '../../../src/sip/parser.js';
import { recorder, responseTo, ScriptedPeer, startLoopbackUac, testLogger, trunk } from './helpers.js';

interface Received {
  req: ParsedRequest;
  raw: string;
  port: number;
}

class FakeTrunk extends ScriptedPeer<Received> {
  readonly socket = dgram.createSocket('udp4');
  readonly responses: string[] = [];

  constructor() {
    super(3000);
  }

  async bind(): Promise<number> {
    this.socket.on('message', (m, rinfo) => {
      const raw = m.toString('utf8');
      const r = parseMessage(m);
      if (!r.ok) throw new Error('fake trunk got malformed: ' + r.reason);
      if (r.message.kind === 'request') this.received({ req: r.message, raw, port: rinfo.port });
      else this.responses.push(raw);
    });
    await new Promise<void>((r) => this.socket.bind(0, '127.0.0.1', () => r()));
    return this.socket.address().port;
  }

  /** Send a response to `to` (reflecting its Via/From/To/Call-ID/CSeq). */
  reply(to: Received, status: number, reason: string, extra: string[] = [], toTag: string | undefined = 'peer-tag', body = ''): void {
    this.socket.send(responseTo(to.req, status, reason, extra, toTag, body), to.port, '127.0.0.1');
  }

  /** Send a raw request to the originator and collect the response. */
  async request(text: string, port: number): Promise<string> {
    const before = this.responses.length;
    this.socket.send(text, port, '127.0.0.1');
    const deadline = Date.now() + 3000;
    while (this.responses.length === before) {
      if (Date.now() > deadline) throw new Error('no response');
      await new Promise((r) => setTimeout(r, 10));
    }
    return this.responses[before] ?? '';
  }

  close(): void {
    this.socket.close();
  }
}

const CLI = '+441234567890';
const DEST = '+447700900123';
const tick = (ms = 50): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('UAC behaviour (scripted UDP peer)', () => {
  let peer: FakeTrunk;
  let port: number;
  let sip: EmbeddedSipOriginator;

  beforeEach(async () => {
    peer = new FakeTrunk();
    port = await peer.bind();
    sip = await startLoopbackUac({ transports: ['udp'], t1Ms: 500 });
  });

  afterEach(async () => {
    await sip.stop();
    peer.close();
  });

  it('builds the INVITE: Request-URI, From/PAI with the CLI, To, Contact, Via with rport, trunk headers, dummy SDP', async () => {
    const t = trunk(`sip:127.0.0.1:${port}`, {
      fromDomain: 'cli.example.com',
      dummySdp: true,
      headers: { 'X-Account': 'acme', 'P-Charge-Info': '<sip:+441@x>' },
    });
    const call = sip.originate({ to: DEST, from: CLI, trunk: t, logger: testLogger }, {});
    const { req, raw, port: srcPort } = await peer.next('INVITE');
    expect(srcPort).toBe(sip.localPort); // connected socket shares the listen port
    expect(req.uri).toBe(`sip:${DEST}@127.0.0.1:${port};user=phone`);
    expect(req.from.uri).toBe(`sip:${CLI}@cli.example.com;user=phone`);
    expect(req.from.tag).toMatch(/^[0-9a-f]+$/);
    expect(req.to.uri).toBe(`sip:${DEST}@127.0.0.1:${port};user=phone`);
    expect(req.to.tag).toBeUndefined();
    expect(getHeader(req, 'p-asserted-identity')).toBe(`<sip:${CLI}@cli.example.com;user=phone>`);
    expect(req.callId).toBe(call.callId);
    expect(req.cseq).toEqual({ seq: 1, method: 'INVITE' });
    expect(req.via).toMatchObject({ transport: 'UDP', host: '127.0.0.1', port: sip.localPort });
    expect(req.via.branch).toMatch(/^z9hG4bK/);
    expect('rport' in req.via.params).toBe(true);
    expect(getHeader(req, 'contact')).toBe(`<sip:127.0.0.1:${sip.localPort}>`);
    expect(getHeader(req, 'max-forwards')).toBe('70');
    expect(getHeader(req, 'user-agent')).toBe('fv-ua/1.0');
    expect(getHeader(req, 'allow')).toBe('INVITE, ACK, CANCEL, BYE, OPTIONS');
    expect(getHeader(req, 'x-account')).toBe('acme');
    expect(raw).toContain('\r\nP-Charge-Info: <sip:+441@x>\r\n');
    expect(getHeader(req, 'content-type')).toBe('application/sdp');
    expect(req.body).toMatch(/^v=0\r\n/);
    expect(req.body).toContain('c=IN IP4 127.0.0.1\r\n');
    expect(req.body).toMatch(/m=audio \d+ RTP\/AVP 0\r\n/);
    expect(req.body).toContain('a=rtpmap:0 PCMU/8000');
    expect(getHeader(req, 'content-length')).toBe(String(Buffer.byteLength(req.body ?? '')));
  });

  it('rejects trunk headers with CR/LF and bad numbers (throws, nothing sent)', () => {
    expect(() =>
      sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`, { headers: { 'X-Evil': 'a\r\nVia: x' } }), logger: testLogger }, {}),
    ).toThrow(/CR\/LF/);
    expect(() =>
      sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`, { headers: { 'X Bad': 'v' } }), logger: testLogger }, {}),
    ).toThrow(/header name/);
    expect(() => sip.originate({ to: 'a@b>', from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, {})).toThrow();
  });

  it('cancel() before any 1xx: nothing sent; if the final arrives first, no CANCEL at all', async () => {
    const rec = recorder();
    const call = sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, rec.delegate);
    const invite = await peer.next('INVITE');
    call.cancel();
    await tick();
    expect(peer.count('CANCEL')).toBe(0);
    peer.reply(invite, 480, 'Temporarily Unavailable');
    await rec.waitFor('ended');
    await tick(100);
    expect(peer.count('CANCEL')).toBe(0);
    expect(peer.count('ACK')).toBe(1);
    expect(rec.events.map((e) => e.type)).toEqual(['failed', 'ended']);
    expect(rec.events[0]).toMatchObject({ failure: { reason: 'unavailable', status: 480 } });
  });

  it('cancel() deferred until 100 Trying; CANCEL is built per RFC 3261 9.1', async () => {
    const rec = recorder();
    const call = sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, rec.delegate);
    const invite = await peer.next('INVITE');
    call.cancel();
    call.cancel(); // idempotent
    peer.reply(invite, 100, 'Trying', [], undefined);
    const { req: cancel } = await peer.next('CANCEL');
    expect(cancel.uri).toBe(invite.req.uri);
    expect(cancel.callId).toBe(invite.req.callId);
    expect(getHeader(cancel, 'from')).toBe(getHeader(invite.req, 'from'));
    expect(getHeader(cancel, 'to')).toBe(getHeader(invite.req, 'to'));
    expect(cancel.to.tag).toBeUndefined();
    expect(cancel.cseq).toEqual({ seq: invite.req.cseq.seq, method: 'CANCEL' });
    expect(cancel.via.branch).toBe(invite.req.via.branch);
    expect(getHeaders(cancel, 'via')).toHaveLength(1);
    peer.reply(await peer.next('CANCEL'), 200, 'OK');
    peer.reply(invite, 487, 'Request Terminated');
    await rec.waitFor('ended');
    expect(rec.events.map((e) => e.type)).toEqual(['cancelled', 'ended']);
    expect(peer.count('CANCEL')).toBe(1);
  });

  it('2xx crossing our CANCEL: ACK, onAnswered(crossedCancel=true), BYE at once; retransmitted 2xx is ACKed again', async () => {
    const rec = recorder();
    const call = sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, rec.delegate);
    const invite = await peer.next('INVITE');
    peer.reply(invite, 180, 'Ringing');
    await rec.waitFor('provisional');
    call.cancel();
    const cancel = await peer.next('CANCEL');
    const ok = [`Contact: <sip:127.0.0.1:${port}>`, 'Content-Type: application/sdp'];
    peer.reply(invite, 200, 'OK', ok, 'peer-tag', 'v=0\r\n');
    peer.reply(cancel, 200, 'OK');
    const ack = await peer.next('ACK');
    expect(ack.req.cseq).toEqual({ seq: 1, method: 'ACK' });
    expect(ack.req.to.tag).toBe('peer-tag');
    expect(ack.req.via.branch).not.toBe(invite.req.via.branch);
    expect(ack.req.uri).toBe(`sip:127.0.0.1:${port}`);
    const bye = await peer.next('BYE');
    expect(bye.req.cseq.seq).toBe(2);
    expect(bye.req.to.tag).toBe('peer-tag');
    expect(rec.events[1]).toEqual({ type: 'answered', sdp: 'v=0\r\n', crossedCancel: true });
    // 2xx retransmission -> ACK again, no second onAnswered
    peer.reply(invite, 200, 'OK', ok, 'peer-tag', 'v=0\r\n');
    await peer.next('ACK', 1);
    peer.reply(bye, 200, 'OK');
    await rec.waitFor('ended');
    expect(rec.events.map((e) => e.type)).toEqual(['provisional', 'answered', 'ended']);
    await expect(call.hangup()).resolves.toBeUndefined();
  });

  it('a 2xx whose Contact and Record-Route name port 0 (a broken or hostile far end): left out, ACK and BYE go to the trunk; the process lives on, the next call is placed; the warning masks the number', async () => {
    const rec = recorder();
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => void lines.push(line) });
    const call = sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger }, rec.delegate);
    const invite = await peer.next('INVITE');
    peer.reply(invite, 180, 'Ringing');
    await rec.waitFor('provisional');
    // An SBC's Contact carrying the called number.
    peer.reply(invite, 200, 'OK', [`Contact: "${DEST}" <sip:${DEST}@127.0.0.1:0>`, `Record-Route: <sip:${DEST}@127.0.0.1:0;lr>`], 'peer-tag', '');
    const ack = await peer.next('ACK');
    expect([ack.req.uri, getHeader(ack.req, 'route')]).toEqual([`sip:${DEST}@127.0.0.1:${port};user=phone`, undefined]);
    void call.hangup();
    const bye = await peer.next('BYE');
    expect(bye.req.uri).toBe(`sip:${DEST}@127.0.0.1:${port};user=phone`);
    peer.reply(bye, 200, 'OK');
    await rec.waitFor('ended');
    const warning = lines.find((l) => l.includes('unusable Contact or Record-Route'));
    expect(warning).toContain('+4477***@127.0.0.1:0');
    expect(lines.join('\n')).not.toContain(DEST.slice(1));
    sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, recorder().delegate);
    expect((await peer.next('INVITE')).req.cseq.method).toBe('INVITE');
  });

  it('a forked branch answering after the 487: ACK (with an answer declining the offer) and one BYE; its retransmitted 2xx only ACKed again', async () => {
    const rec = recorder();
    const call = sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, rec.delegate);
    const invite = await peer.next('INVITE');
    peer.reply(invite, 180, 'Ringing', [], 'branch-a');
    await rec.waitFor('provisional');
    call.cancel();
    const cancel = await peer.next('CANCEL');
    peer.reply(cancel, 200, 'OK', [], 'branch-a');
    peer.reply(invite, 487, 'Request Terminated', [], 'branch-a');
    const ack487 = await peer.next('ACK');
    expect(ack487.req.to.tag).toBe('branch-a');
    await rec.waitFor('cancelled');
    // Another branch answers, with an offer (our INVITE had none): the INVITE transaction is Completed by now.
    const offer = 'v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8 0\r\nm=video 4002 RTP/AVP 96\r\n';
    const ok = [`Contact: <sip:127.0.0.1:${port}>`, 'Content-Type: application/sdp'];
    peer.reply(invite, 200, 'OK', ok, 'branch-b', offer);
    const ack = await peer.next('ACK', 1);
    expect(ack.req.to.tag).toBe('branch-b');
    expect(ack.req.via.branch).not.toBe(invite.req.via.branch);
    expect(getHeader(ack.req, 'content-type')).toBe('application/sdp');
    // The answer: the offer's m-lines in order, every one declined (port 0).
    expect(ack.req.body?.split('\r\n').filter((l) => l.startsWith('m='))).toEqual(['m=audio 0 RTP/AVP 8', 'm=video 0 RTP/AVP 96']);
    const bye = await peer.next('BYE');
    expect(bye.req.to.tag).toBe('branch-b');
    // The same 2xx again: ACKed again, no second BYE.
    peer.reply(invite, 200, 'OK', ok, 'branch-b', offer);
    await peer.next('ACK', 2);
    await tick(200);
    expect(peer.count('BYE')).toBe(1);
    peer.reply(bye, 200, 'OK');
    // Nothing reported for the late dialog: the call was cancelled.
    expect(rec.events.map((e) => e.type)).not.toContain('answered');
  });

  /** A request the far end sends in the dialog `invite` made (From tag peer-tag; To tag ours unless `toTag`). */
  const inDialog = (invite: Received, method: string, seq: number, toTag = invite.req.from.tag ?? '', body = ''): string =>
    [
      `${method} sip:127.0.0.1:${sip.localPort} SIP/2.0`,
      `Via: SIP/2.0/UDP 127.0.0.1:${port};branch=z9hG4bKpeer${seq}${method};rport`,
      `From: <sip:${DEST}@127.0.0.1>;tag=peer-tag`,
      `To: ${getHeader(invite.req, 'from')?.replace(/;tag=.*/, '')};tag=${toTag}`,
      `Call-ID: ${invite.req.callId}`,
      `CSeq: ${seq} ${method}`,
      `Contact: <sip:127.0.0.1:${port}>`,
      `Content-Length: ${Buffer.byteLength(body)}`,
      '',
      body,
    ].join('\r\n');
  const statusLine = async (text: string): Promise<string> => (await peer.request(text, sip.localPort)).split('\r\n')[0] ?? '';

  /** An answered call (UAC with an SDP offer) and its INVITE as the peer saw it. */
  async function answeredCall(rec: ReturnType<typeof recorder>, sdp: string): Promise<Received> {
    sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), sdp, logger: testLogger }, rec.delegate);
    const invite = await peer.next('INVITE');
    peer.reply(invite, 200, 'OK', [`Contact: <sip:127.0.0.1:${port}>`], 'peer-tag');
    await rec.waitFor('answered');
    return invite;
  }

  it('answered call: in-dialog OPTIONS 200, re-INVITE 200 with our SDP, unknown 501, unknown dialog 481, remote BYE', async () => {
    const rec = recorder();
    const sdp = 'v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n';
    const invite = await answeredCall(rec, sdp);
    expect(invite.req.body).toBe(sdp);
    expect(await statusLine(inDialog(invite, 'OPTIONS', 10))).toBe('SIP/2.0 200 OK');
    const reinvite = await peer.request(inDialog(invite, 'INVITE', 11, undefined, 'v=0\r\n'), sip.localPort);
    expect(reinvite.split('\r\n')[0]).toBe('SIP/2.0 200 OK');
    expect(reinvite.endsWith(sdp)).toBe(true);
    expect(await statusLine(inDialog(invite, 'FROBNICATE', 12))).toBe('SIP/2.0 501 Not Implemented');
    expect(await statusLine(inDialog(invite, 'BYE', 13, 'not-our-tag'))).toBe('SIP/2.0 481 Call/Transaction Does Not Exist');
    expect(rec.events.map((e) => e.type)).toEqual(['answered']);
    expect(await statusLine(inDialog(invite, 'BYE', 14))).toBe('SIP/2.0 200 OK');
    await rec.waitFor('ended');
    expect(rec.events.map((e) => e.type)).toEqual(['answered', 'remoteHangup', 'ended']);
    // BYE retransmission while the call lingers: 200 again, no second callback.
    expect(await statusLine(inDialog(invite, 'BYE', 14))).toBe('SIP/2.0 200 OK');
    expect(rec.events.filter((e) => e.type === 'remoteHangup')).toHaveLength(1);
  });

  it('our 2xx to a re-INVITE is sent again at T1, 2T1 ... until its ACK (RFC 3261 13.3.1.4); the re-INVITE retransmitted gets it too', async () => {
    const rec = recorder();
    const invite = await answeredCall(rec, 'v=0\r\n');
    const count = (): number => peer.responses.filter((r) => r.startsWith('SIP/2.0 200') && r.includes('\r\nCSeq: 20 INVITE\r\n')).length;
    const t0 = Date.now();
    peer.socket.send(inDialog(invite, 'INVITE', 20), sip.localPort, '127.0.0.1');
    // T1 500 ms: sent at 0, 500, 1500 ms.
    while (count() < 3 && Date.now() - t0 < 3000) await tick(20);
    expect(count()).toBe(3);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1400);
    // The re-INVITE again (its retransmission): the same 200, no new answer.
    peer.socket.send(inDialog(invite, 'INVITE', 20), sip.localPort, '127.0.0.1');
    await tick(100);
    expect(count()).toBe(4);
    expect(new Set(peer.responses.filter((r) => r.includes('\r\nCSeq: 20 INVITE\r\n'))).size).toBe(1);
    // Its ACK: no more.
    peer.socket.send(inDialog(invite, 'ACK', 20), sip.localPort, '127.0.0.1');
    await tick(2500);
    expect(count()).toBe(4);
  });

  it('a re-INVITE\'s offer answered later by the media side (a media server asked first): 200 with that answer then, nothing before; refused: 488', async () => {
    const rec = recorder();
    const offers: string[] = [];
    let answerNow: (sdp: string | undefined) => void = () => undefined;
    rec.delegate.onOffer = (sdp) => {
      offers.push(sdp);
      return new Promise<string | undefined>((resolve) => (answerNow = resolve));
    };
    const invite = await answeredCall(rec, 'v=0\r\n');
    const offer = 'v=0\r\no=sbc 1 2 IN IP4 127.0.0.9\r\ns=-\r\nc=IN IP4 127.0.0.9\r\nt=0 0\r\nm=audio 41000 RTP/AVP 0\r\n';
    const reinvite = (seq: number): string => inDialog(invite, 'INVITE', seq, undefined, offer).replace('Content-Length', 'Content-Type: application/sdp\r\nContent-Length');
    const answers = (seq: number): string[] => peer.responses.filter((r) => r.includes(`\r\nCSeq: ${seq} INVITE\r\n`));
    peer.socket.send(reinvite(30), sip.localPort, '127.0.0.1');
    await tick(150);
    // Its retransmission while the answer is being made: not asked again, nothing sent yet.
    peer.socket.send(reinvite(30), sip.localPort, '127.0.0.1');
    await tick(150);
    expect([offers, answers(30)]).toEqual([[offer], []]);
    answerNow('v=0\r\no=fs 1 3 IN IP4 127.0.0.1\r\n');
    await tick(100);
    expect(answers(30)[0]).toMatch(/^SIP\/2\.0 200 OK\r\n[\s\S]*\r\n\r\nv=0\r\no=fs 1 3 IN IP4 127\.0\.0\.1\r\n$/);
    peer.socket.send(inDialog(invite, 'ACK', 30), sip.localPort, '127.0.0.1');
    // The next one refused by the media side: 488, the call goes on.
    peer.socket.send(reinvite(31), sip.localPort, '127.0.0.1');
    await tick(50);
    answerNow(undefined);
    await tick(100);
    expect(answers(31).map((r) => r.split('\r\n')[0])).toEqual(['SIP/2.0 488 Not Acceptable Here']);
    expect(rec.events.map((e) => e.type)).toEqual(['answered']);
  });

  it('in-dialog manners: known methods we do not take 405 + Allow, unknown 501, CANCEL 481, CSeq below the last seen 500 (RFC 3261 8.2.1, 9.2, 12.2.2)', async () => {
    const rec = recorder();
    const invite = await answeredCall(rec, 'v=0\r\n');
    for (const method of ['INFO', 'SUBSCRIBE', 'REFER', 'MESSAGE', 'UPDATE', 'PRACK']) {
      const response = await peer.request(inDialog(invite, method, 5), sip.localPort);
      expect(response.split('\r\n')[0], method).toBe('SIP/2.0 405 Method Not Allowed');
      expect(response).toContain('\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n');
    }
    const unknown = await peer.request(inDialog(invite, 'FROBNICATE', 5), sip.localPort);
    expect(unknown.split('\r\n')[0]).toBe('SIP/2.0 501 Not Implemented');
    expect(unknown).toContain('\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n');
    // A CANCEL in the dialog (of a re-INVITE long answered): no transaction to cancel.
    expect(await statusLine(inDialog(invite, 'CANCEL', 5))).toBe('SIP/2.0 481 Call/Transaction Does Not Exist');
    // The rejected requests left the remote CSeq empty: 5 sets it; 3 is then out of order, 5 again a retransmission.
    expect(await statusLine(inDialog(invite, 'OPTIONS', 5))).toBe('SIP/2.0 200 OK');
    expect(await statusLine(inDialog(invite, 'OPTIONS', 3))).toBe('SIP/2.0 500 Server Internal Error');
    // A stale BYE does not end the call.
    expect(await statusLine(inDialog(invite, 'BYE', 4))).toBe('SIP/2.0 500 Server Internal Error');
    await tick(100);
    expect(rec.events.map((e) => e.type)).toEqual(['answered']);
    expect(await statusLine(inDialog(invite, 'OPTIONS', 5))).toBe('SIP/2.0 200 OK');
    expect(await statusLine(inDialog(invite, 'BYE', 6))).toBe('SIP/2.0 200 OK');
    await rec.waitFor('ended');
    expect(rec.events.map((e) => e.type)).toEqual(['answered', 'remoteHangup', 'ended']);
  });

  it('re-INVITE without any SDP of ours -> 488', async () => {
    const rec = recorder();
    sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, rec.delegate);
    const invite = await peer.next('INVITE');
    expect(invite.req.body).toBeUndefined();
    peer.reply(invite, 200, 'OK', [`Contact: <sip:127.0.0.1:${port}>`], 'peer-tag');
    await rec.waitFor('answered');
    const text = [
      `INVITE sip:127.0.0.1:${sip.localPort} SIP/2.0`,
      `Via: SIP/2.0/UDP 127.0.0.1:${port};branch=z9hG4bKre1`,
      `From: <sip:${DEST}@127.0.0.1>;tag=peer-tag`,
      `To: <sip:x@y>;tag=${invite.req.from.tag ?? ''}`,
      `Call-ID: ${invite.req.callId}`,
      'CSeq: 5 INVITE',
      'Content-Length: 0',
      '',
      '',
    ].join('\r\n');
    expect((await peer.request(text, sip.localPort)).split('\r\n')[0]).toBe('SIP/2.0 488 Not Acceptable Here');
  });

  it('digest: 401 -> retry with Authorization (same Call-ID/From tag, CSeq+1, new branch); a second non-stale 401 -> rejected', async () => {
    const rec = recorder();
    const t = trunk(`sip:127.0.0.1:${port}`, { auth: { username: 'u1', password: 'p1' } });
    sip.originate({ to: DEST, from: CLI, trunk: t, logger: testLogger }, rec.delegate);
    const first = await peer.next('INVITE');
    peer.reply(first, 401, 'Unauthorized', ['WWW-Authenticate: Digest realm="r1", nonce="n1"']);
    const second = await peer.next('INVITE', 1);
    expect(second.req.callId).toBe(first.req.callId);
    expect(second.req.from.tag).toBe(first.req.from.tag);
    expect(second.req.cseq.seq).toBe(2);
    expect(second.req.via.branch).not.toBe(first.req.via.branch);
    const auth = getHeader(second.req, 'authorization') ?? '';
    expect(auth).toMatch(/^Digest username="u1", realm="r1", nonce="n1", uri="sip:\+447700900123@127\.0\.0\.1:\d+;user=phone", response="[0-9a-f]{32}"/);
    expect(auth).not.toContain('qop');
    peer.reply(second, 401, 'Unauthorized', ['WWW-Authenticate: Digest realm="r1", nonce="n2"']);
    const failed = await rec.waitFor('failed');
    expect(failed).toMatchObject({ failure: { reason: 'rejected', status: 401 } });
    await rec.waitFor('ended');
    await peer.next('ACK', 1);
    expect(peer.count('INVITE')).toBe(2);
  });

  it('digest: a stale=true re-challenge is answered again (nc restarts for the new nonce)', async () => {
    const rec = recorder();
    const t = trunk(`sip:127.0.0.1:${port}`, { auth: { username: 'u1', password: 'p1' } });
    sip.originate({ to: DEST, from: CLI, trunk: t, logger: testLogger }, rec.delegate);
    const first = await peer.next('INVITE');
    peer.reply(first, 407, 'Proxy Authentication Required', ['Proxy-Authenticate: Digest realm="r1", nonce="n1", qop="auth"']);
    const second = await peer.next('INVITE', 1);
    expect(getHeader(second.req, 'proxy-authorization')).toContain('nc=00000001');
    peer.reply(second, 407, 'Proxy Authentication Required', ['Proxy-Authenticate: Digest realm="r1", nonce="n2", qop="auth", stale=true']);
    const third = await peer.next('INVITE', 2);
    expect(third.req.cseq.seq).toBe(3);
    expect(getHeader(third.req, 'proxy-authorization')).toContain('nonce="n2"');
    peer.reply(third, 603, 'Decline');
    const failed = await rec.waitFor('failed');
    expect(failed).toMatchObject({ failure: { reason: 'declined', status: 603, phrase: 'Decline' } });
  });

  it('a response with a second Via (meant for a proxy before us, RFC 3261 8.1.3.3) is dropped; the right one is taken', async () => {
    const rec = recorder();
    sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, rec.delegate);
    const invite = await peer.next('INVITE');
    peer.reply(invite, 486, 'Busy Here', ['Via: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKproxy1']);
    await tick(200);
    expect(rec.events).toEqual([]);
    expect(peer.count('ACK')).toBe(0);
    peer.reply(invite, 603, 'Decline');
    expect(await rec.waitFor('failed')).toMatchObject({ failure: { reason: 'declined', status: 603 } });
    await rec.waitFor('ended');
  });

  it('digest: a challenge offering SHA-256 then MD5 for one realm (RFC 8760 2.4) is answered once, with the topmost (SHA-256)', async () => {
    const h = (s: string): string => createHash('sha256').update(s).digest('hex');
    const rec = recorder();
    const t = trunk(`sip:127.0.0.1:${port}`, { auth: { username: 'u1', password: 'p1' } });
    sip.originate({ to: DEST, from: CLI, trunk: t, logger: testLogger }, rec.delegate);
    const first = await peer.next('INVITE');
    peer.reply(first, 401, 'Unauthorized', [
      'WWW-Authenticate: Digest realm="carrier", nonce="n1", algorithm=SHA-256, qop="auth"',
      'WWW-Authenticate: Digest realm="carrier", nonce="n1", algorithm=MD5, qop="auth"',
    ]);
    const second = await peer.next('INVITE', 1);
    const auth = getHeaders(second.req, 'authorization');
    expect(auth).toHaveLength(1);
    const field = (name: string): string => new RegExp(`[ ,]${name}="?([^",]*)"?`).exec(auth[0]!)?.[1] ?? '';
    expect(field('algorithm')).toBe('SHA-256');
    const ha1 = h('u1:carrier:p1');
    const ha2 = h(`INVITE:${second.req.uri}`);
    expect(field('response')).toBe(h(`${ha1}:n1:${field('nc')}:${field('cnonce')}:auth:${ha2}`));
    peer.reply(second, 603, 'Decline');
    expect(await rec.waitFor('failed')).toMatchObject({ failure: { reason: 'declined', status: 603 } });
    await rec.waitFor('ended');
  });

  it.each(['MD5', 'SHA-256'])('digest qop=auth-int (%s): the response covers the INVITE\'s SDP body (RFC 2617 3.2.2.3, RFC 8760)', async (algorithm) => {
    const h = (s: string): string => createHash(algorithm === 'MD5' ? 'md5' : 'sha256').update(s).digest('hex');
    const rec = recorder();
    const sdp = 'v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n';
    const t = trunk(`sip:127.0.0.1:${port}`, { auth: { username: 'u1', password: 'p1' } });
    sip.originate({ to: DEST, from: CLI, trunk: t, sdp, logger: testLogger }, rec.delegate);
    const first = await peer.next('INVITE');
    peer.reply(first, 401, 'Unauthorized', [`WWW-Authenticate: Digest realm="r1", nonce="n1", algorithm=${algorithm}, qop="auth-int"`]);
    const second = await peer.next('INVITE', 1);
    expect(second.req.body).toBe(sdp);
    const auth = getHeader(second.req, 'authorization') ?? '';
    const field = (name: string): string => new RegExp(`[ ,]${name}="?([^",]*)"?`).exec(auth)?.[1] ?? '';
    expect(field('qop')).toBe('auth-int');
    const ha1 = h('u1:r1:p1');
    const ha2 = h(`INVITE:${second.req.uri}:${h(sdp)}`);
    expect(field('uri')).toBe(second.req.uri);
    expect(field('response')).toBe(h(`${ha1}:n1:${field('nc')}:${field('cnonce')}:auth-int:${ha2}`));
    peer.reply(second, 603, 'Decline');
    await rec.waitFor('ended');
  });

  it.each([
    [486, 'busy'],
    [600, 'busy'],
    [603, 'declined'],
    [404, 'not_found'],
    [604, 'not_found'],
    [480, 'unavailable'],
    [301, 'redirected'],
    [302, 'redirected'],
    [380, 'redirected'],
    [503, 'rejected'],
  ] as const)('final %i -> onFailed %s', async (status, reason) => {
    const rec = recorder();
    sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, rec.delegate);
    const invite = await peer.next('INVITE');
    peer.reply(invite, status, 'Some Phrase');
    const failed = await rec.waitFor('failed');
    expect(failed).toEqual({ type: 'failed', failure: { reason, status, phrase: 'Some Phrase' } });
    await rec.waitFor('ended');
  });

  it('302 Moved Temporarily: failed `redirected` with its status, ACKed in the INVITE transaction, not followed', async () => {
    const rec = recorder();
    sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, rec.delegate);
    const invite = await peer.next('INVITE');
    peer.reply(invite, 100, 'Trying', [], undefined);
    peer.reply(invite, 302, 'Moved Temporarily', [`Contact: <sip:${DEST}@127.0.0.1:${port + 1}>`], 'redir-tag');
    const ack = await peer.next('ACK');
    // 17.1.1.3: the ACK of a non-2xx final shares the INVITE's branch, Request-URI and CSeq number, with the 3xx's To.
    expect(ack.req.via.branch).toBe(invite.req.via.branch);
    expect(ack.req.uri).toBe(invite.req.uri);
    expect(ack.req.cseq).toEqual({ seq: invite.req.cseq.seq, method: 'ACK' });
    expect(ack.req.to.tag).toBe('redir-tag');
    expect(await rec.waitFor('failed')).toEqual({
      type: 'failed',
      failure: { reason: 'redirected', status: 302, phrase: 'Moved Temporarily' },
    });
    await rec.waitFor('ended');
    await tick(100);
    expect(peer.count('INVITE')).toBe(1);
  });

  it('hangup() before answer is a no-op', async () => {
    const rec = recorder();
    const call = sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, rec.delegate);
    await peer.next('INVITE');
    await expect(call.hangup()).resolves.toBeUndefined();
    expect(peer.count('BYE')).toBe(0);
  });

  it('RFC 3262: a reliable 1xx is PRACKed (RAck = its RSeq and the INVITE CSeq), one with a gap in RSeq neither PRACKed nor reported, the next in order is; a far end may send them without being asked', async () => {
    const rec = recorder();
    // rel100 off: the INVITE does not offer 100rel, and a far end that sends a reliable 1xx anyway still gets its PRACK.
    sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, rec.delegate);
    const invite = await peer.next('INVITE');
    expect(getHeader(invite.req, 'supported')).toBeUndefined();
    const contact = `Contact: <sip:127.0.0.1:${peer.socket.address().port}>`;
    peer.reply(invite, 183, 'Session Progress', [contact, 'Require: 100rel', 'RSeq: 5']);
    const first = await peer.next('PRACK');
    expect(getHeader(first.req, 'rack')).toBe('5 1 INVITE');
    expect(first.req.cseq).toEqual({ seq: 2, method: 'PRACK' });
    expect(first.req.to.tag).toBe('peer-tag');
    expect(first.req.uri).toBe(`sip:127.0.0.1:${peer.socket.address().port}`);
    peer.reply(first, 200, 'OK');
    // RSeq 7 after 5: 6 is missing. Not PRACKed, not acted on (RFC 3262 4).
    peer.reply(invite, 180, 'Ringing', [contact, 'Require: 100rel', 'RSeq: 7']);
    await tick(300);
    expect(peer.count('PRACK')).toBe(1);
    // An unreliable 1xx (no Require: 100rel) is taken as before, without a PRACK.
    peer.reply(invite, 180, 'Ringing', [contact]);
    await tick(100);
    peer.reply(invite, 180, 'Ringing', [contact, 'Require: 100rel', 'RSeq: 6']);
    const second = await peer.next('PRACK', 1);
    expect(getHeader(second.req, 'rack')).toBe('6 1 INVITE');
    expect(second.req.cseq).toEqual({ seq: 3, method: 'PRACK' });
    peer.reply(second, 200, 'OK');
    expect(rec.events).toEqual([
      { type: 'provisional', status: 183 },
      { type: 'provisional', status: 180 },
      { type: 'provisional', status: 180 },
    ]);
    peer.reply(invite, 486, 'Busy Here');
    await rec.waitFor('ended');
    expect(peer.count('PRACK')).toBe(2);
  });

  it('421 Extension Required (100rel) fails the call and says which setting lets it through', async () => {
    const lines: Record<string, unknown>[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
    const rec = recorder();
    sip.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger }, rec.delegate);
    const invite = await peer.next('INVITE');
    peer.reply(invite, 421, 'Extension Required', ['Require: 100rel']);
    expect(await rec.waitFor('failed')).toMatchObject({ failure: { status: 421 } });
    expect(lines.find((l) => l['level'] === 40)).toMatchObject({
      trunk: 'test',
      status: 421,
      option_tags: '100rel',
      msg: 'the trunk requires reliable provisional responses (100rel): set sip.trunks[].rel100 to supported',
    });
  });
});
