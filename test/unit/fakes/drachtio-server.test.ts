import { describe, expect, it } from 'vitest';
import { encodeFrame, FrameDecoder, matchesProtocol, parseFrame, parseSip, serializeSip, serverLeader } from '../../fakes/drachtio-server.js';

/** The fake drachtio-server's framing and parsing (what drachtio-srf lib/wire-protocol.js expects). */
describe('fake drachtio-server wire format', () => {
  it('frames carry the UTF-8 byte length, not the character count', () => {
    const payload = 'abc|sip|||\r\nINVITE sip:é@x SIP/2.0';
    const frame = encodeFrame(payload);
    const hash = frame.indexOf('#');
    expect(Number(frame.toString('latin1', 0, hash))).toBe(Buffer.byteLength(payload));
    expect(frame.length).toBe(hash + 1 + Buffer.byteLength(payload));
  });

  it('reassembles frames split anywhere, several per chunk', () => {
    const a = 'id1|authenticate|secret|';
    const b = 'id2|sip|||\r\nOPTIONS sip:ü@h SIP/2.0\r\n\r\n';
    const all = Buffer.concat([encodeFrame(a), encodeFrame(b), encodeFrame(a)]);
    for (let cut = 1; cut < all.length; cut++) {
      const d = new FrameDecoder();
      expect([...d.push(all.subarray(0, cut)), ...d.push(all.subarray(cut))]).toEqual([a, b, a]);
    }
  });

  it('rejects a frame without a length, or with a length of more than 5 digits (client.cpp readMessageLength)', () => {
    expect(() => new FrameDecoder().push(Buffer.from('#abc'))).toThrow();
    expect(() => new FrameDecoder().push(Buffer.from('x1#abc'))).toThrow();
    expect(() => new FrameDecoder().push(Buffer.from('100000#abc'))).toThrow();
    expect(new FrameDecoder().push(Buffer.from('3#abc'))).toEqual(['abc']);
  });

  it('builds its frames from test/fixtures/drachtio/admin-protocol.txt and checks app frames against it', () => {
    expect(serverLeader('ping', { uuid: 'u1', msgId: 'm1' })).toBe('u1|response|m1|OK|pong');
    expect(serverLeader('authenticate-rejected', { uuid: 'u1', msgId: 'm1' })).toBe('u1|response|m1|NO|incorrect secret');
    expect(
      serverLeader('sip-from-network', { uuid: 'u', bytes: 10, protocol: 'udp', address: '127.0.0.1', port: 5090, time: 't', txnId: 'x', dialogId: 'c;uac' }),
    ).toBe('u|sip|network|10|udp|127.0.0.1|5090|t|x|c;uac|');
    // A template left partly unfilled is a bug in the fake, not a frame.
    expect(() => serverLeader('sip-refused', { uuid: 'u', msgId: 'm' })).toThrow(/unfilled/);
    expect(matchesProtocol('app', 'm1|authenticate|cymru|')).toBe(true);
    expect(matchesProtocol('app', 'm1|sip|txn-1|')).toBe(true);
    expect(matchesProtocol('app', 'm1|sip||dlg;uac')).toBe(true);
    expect(matchesProtocol('app', 'm1|sip')).toBe(false);
    expect(matchesProtocol('server', 'u|response|m1|OK|pong')).toBe(true);
  });

  it('parses the leader tokens and the SIP message after the first CRLF', () => {
    const f = parseFrame('u1|sip|txn-1|dlg-1\r\nCANCEL sip:a@b SIP/2.0\r\nCall-ID: c\r\n\r\n');
    expect(f).toMatchObject({ msgId: 'u1', type: 'sip', args: ['txn-1', 'dlg-1'] });
    expect(parseSip(f.body).method).toBe('CANCEL');
    expect(parseFrame('u2|ping')).toEqual({ msgId: 'u2', type: 'ping', args: [], body: '' });
  });

  it('parses requests and responses, compact header forms and folded lines', () => {
    const req = parseSip('INVITE sip:+44@h;user=phone SIP/2.0\r\nf: <sip:a@h>;tag=1\r\nSubject: one\r\n two\r\nl: 3\r\n\r\nabc');
    expect(req).toMatchObject({ method: 'INVITE', uri: 'sip:+44@h;user=phone', body: 'abc' });
    expect(req.header('From')).toBe('<sip:a@h>;tag=1');
    expect(req.header('subject')).toBe('one two');
    const res = parseSip('SIP/2.0 487 Request Terminated\r\nCall-ID: x\r\n\r\n');
    expect(res).toMatchObject({ status: 487, reason: 'Request Terminated' });
    expect(() => parseSip('garbage')).toThrow();
  });

  it('serializes with a correct Content-Length', () => {
    const raw = serializeSip('SIP/2.0 200 OK', [{ name: 'Content-Length', value: '99' }, { name: 'Call-ID', value: 'x' }], 'é');
    expect(raw).toBe('SIP/2.0 200 OK\r\nCall-ID: x\r\nContent-Length: 2\r\n\r\né');
  });
});
