import { describe, expect, it } from 'vitest';
import { getHeader, getHeaders, hdr, serializeMessage, type SipRequest } from '../../../src/sip/message.js';
import {
  parseCSeq,
  parseMessage,
  parseNameAddr,
  parseSipUri,
  parseVia,
  StreamFramer,
  type ParseResult,
} from '../../../src/sip/parser.js';

const crlf = (lines: string[]): Buffer => Buffer.from(lines.join('\r\n'), 'utf8');

const INVITE = [
  'INVITE sip:+447700900000@trunk.example.net:5060;user=phone SIP/2.0',
  'Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKaaa;rport',
  'Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKbbb, SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bKccc;received=192.0.2.1',
  'Max-Forwards: 70',
  'From: "Flash Verify" <sip:+441234567890@example.com;user=phone>;tag=abc123',
  'To: <sip:+447700900000@trunk.example.net;user=phone>',
  'Call-ID: 1234@host',
  'CSeq: 1 INVITE',
  'Content-Type: application/sdp',
  'Content-Length: 4',
  '',
  'v=0\r\nTRAILING-GARBAGE',
];

function ok(r: ParseResult): Exclude<ParseResult, { ok: false }>['message'] {
  if (!r.ok) throw new Error('expected success, got: ' + r.reason);
  return r.message;
}

function bad(input: Buffer | string, datagram = true): string {
  const r = parseMessage(typeof input === 'string' ? Buffer.from(input, 'latin1') : input, { datagram });
  if (r.ok) throw new Error('expected failure');
  return r.reason;
}

describe('parseMessage', () => {
  it('parses a request with multiple Via (separate lines and comma-separated) and slices the body by Content-Length', () => {
    const m = ok(parseMessage(crlf(INVITE)));
    expect(m.kind).toBe('request');
    if (m.kind !== 'request') return;
    expect(m.method).toBe('INVITE');
    expect(m.uri).toBe('sip:+447700900000@trunk.example.net:5060;user=phone');
    expect(getHeaders(m, 'via')).toHaveLength(3);
    expect(m.via).toMatchObject({ transport: 'UDP', host: '10.0.0.1', port: 5070, branch: 'z9hG4bKaaa' });
    expect('rport' in m.via.params).toBe(true);
    const third = parseVia(getHeaders(m, 'v')[2] ?? '');
    expect(third).toMatchObject({ transport: 'TCP', host: '[2001:db8::1]', port: 5061, branch: 'z9hG4bKccc' });
    expect(third?.params['received']).toBe('192.0.2.1');
    expect(m.from).toMatchObject({ displayName: 'Flash Verify', uri: 'sip:+441234567890@example.com;user=phone', tag: 'abc123' });
    expect(m.to.tag).toBeUndefined();
    expect(m.cseq).toEqual({ seq: 1, method: 'INVITE' });
    expect(m.callId).toBe('1234@host');
    expect(m.body).toBe('v=0\r');
  });

  it('expands compact header forms', () => {
    const m = ok(
      parseMessage(
        crlf([
          'SIP/2.0 180 Ringing',
          'v: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKx',
          'f: <sip:a@b>;tag=1',
          't: <sip:c@d>;tag=2',
          'i: cid-1',
          'CSeq: 7 INVITE',
          'm: <sip:c@10.0.0.9:5060>',
          'c: application/sdp',
          'k: 100rel',
          's: hello',
          'e: gzip',
          'o: refer',
          'r: <sip:x@y>',
          'x: 1800',
          'l: 0',
          '',
          '',
        ]),
      ),
    );
    expect(m.kind).toBe('response');
    if (m.kind !== 'response') return;
    expect(m.status).toBe(180);
    expect(m.reason).toBe('Ringing');
    expect(m.callId).toBe('cid-1');
    expect(m.to.tag).toBe('2');
    expect(getHeader(m, 'Contact')).toBe('<sip:c@10.0.0.9:5060>');
    expect(getHeader(m, 'content-type')).toBe('application/sdp');
    expect(getHeader(m, 'supported')).toBe('100rel');
    expect(getHeader(m, 'subject')).toBe('hello');
    expect(getHeader(m, 'content-encoding')).toBe('gzip');
    expect(getHeader(m, 'event')).toBe('refer');
    expect(getHeader(m, 'refer-to')).toBe('<sip:x@y>');
    expect(getHeader(m, 'session-expires')).toBe('1800');
    expect(getHeader(m, 'i')).toBe('cid-1');
    expect(m.body).toBeUndefined();
  });

  it('treats header names case-insensitively and tolerates odd whitespace and folding', () => {
    const m = ok(
      parseMessage(
        crlf([
          'SIP/2.0 200 OK',
          'VIA:   SIP / 2.0 / UDP   10.0.0.1:5070 ; branch=z9hG4bKy ;rport',
          'fRoM:<sip:a@b>;tag=1',
          'TO :  <sip:c@d>',
          '  ;tag=folded',
          'CALL-id:\tcid-2  ',
          'cseq:   42    BYE',
          'Subject: first',
          '\tsecond',
          'CONTENT-LENGTH: 0',
          '',
          '',
        ]),
      ),
    );
    expect(m.via).toMatchObject({ transport: 'UDP', host: '10.0.0.1', port: 5070, branch: 'z9hG4bKy' });
    expect(m.from.tag).toBe('1');
    expect(m.to.tag).toBe('folded');
    expect(m.callId).toBe('cid-2');
    expect(m.cseq).toEqual({ seq: 42, method: 'BYE' });
    expect(getHeader(m, 'subject')).toBe('first second');
  });

  it('accepts bare LF line endings', () => {
    const text = 'OPTIONS sip:x@y SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:a@b>;tag=1\nTo: <sip:x@y>\nCall-ID: c\nCSeq: 1 OPTIONS\n\n';
    const m = ok(parseMessage(Buffer.from(text)));
    expect(m.kind === 'request' && m.method).toBe('OPTIONS');
  });

  it('on UDP a missing Content-Length means the rest of the datagram', () => {
    const lines = INVITE.filter((l) => !l.startsWith('Content-Length'));
    const m = ok(parseMessage(crlf(lines), { datagram: true }));
    expect(m.body).toBe('v=0\r\nTRAILING-GARBAGE');
    expect(bad(crlf(lines), false)).toMatch(/Content-Length/);
  });

  it('slices a multi-byte UTF-8 body by bytes', () => {
    const body = 'héllo';
    const m = ok(
      parseMessage(
        crlf([
          'MESSAGE sip:x@y SIP/2.0',
          'Via: SIP/2.0/UDP h;branch=z9hG4bK1',
          'From: <sip:a@b>;tag=1',
          'To: <sip:x@y>',
          'Call-ID: c',
          'CSeq: 1 MESSAGE',
          `Content-Length: ${Buffer.byteLength(body)}`,
          '',
          body + 'xyz',
        ]),
      ),
    );
    expect(m.body).toBe(body);
  });

  it('rejects malformed input without throwing', () => {
    const base = (over: Record<string, string | null>, start = 'INVITE sip:x@y SIP/2.0'): Buffer => {
      const h: Record<string, string | null> = {
        Via: 'SIP/2.0/UDP h;branch=z9hG4bK1',
        From: '<sip:a@b>;tag=1',
        To: '<sip:x@y>',
        'Call-ID': 'c',
        CSeq: '1 INVITE',
        'Content-Length': '0',
        ...over,
      };
      const lines = [start];
      for (const [k, v] of Object.entries(h)) if (v !== null) lines.push(`${k}: ${v}`);
      return crlf([...lines, '', '']);
    };
    expect(bad('')).toBeTruthy();
    expect(bad('\r\n\r\n')).toBeTruthy();
    expect(bad('garbage')).toBeTruthy();
    expect(bad(Buffer.from([0xff, 0x00, 0x13, 0x37, 0x0a, 0x0a]))).toBeTruthy();
    expect(bad('\u0000\u0001\u0002 hello world\r\n\r\n')).toBeTruthy();
    expect(bad(base({}, 'INVITE sip:x@y'))).toMatch(/start line/);
    expect(bad(base({}, 'INVITE sip:x@y SIP/3.0'))).toMatch(/version/);
    expect(bad(base({}, 'IN(VITE sip:x@y SIP/2.0'))).toMatch(/method/);
    expect(bad(base({}, 'SIP/2.0 abc OK'))).toMatch(/status/);
    expect(bad(base({}, 'SIP/2.0 99 Low'))).toMatch(/status/);
    expect(bad(base({ CSeq: 'one INVITE' }))).toMatch(/CSeq/);
    expect(bad(base({ CSeq: '1' }))).toMatch(/CSeq/);
    expect(bad(base({ CSeq: '99999999999 INVITE' }))).toMatch(/CSeq/);
    expect(bad(base({ CSeq: '1 BYE' }))).toMatch(/CSeq/);
    expect(bad(base({ CSeq: null }))).toMatch(/CSeq/);
    expect(bad(base({ 'Content-Length': '-1' }))).toMatch(/Content-Length/);
    expect(bad(base({ 'Content-Length': '12abc' }))).toMatch(/Content-Length/);
    expect(bad(base({ 'Content-Length': '99999999' }))).toMatch(/Content-Length/);
    expect(bad(base({ 'Content-Length': '10' }))).toMatch(/Content-Length/);
    expect(bad(base({ Via: null }))).toMatch(/Via/);
    expect(bad(base({ Via: 'HTTP/1.1 host' }))).toMatch(/Via/);
    expect(bad(base({ From: '"unterminated <sip:a@b' }))).toMatch(/From/);
    expect(bad(base({ 'Call-ID': null }))).toMatch(/Call-ID/);
    expect(bad(crlf(['INVITE sip:x@y SIP/2.0', 'no colon here', '', '']))).toBeTruthy();
    expect(bad(Buffer.alloc(20_000, 0x41))).toBeTruthy();
  });

  it('never throws on random bytes', () => {
    let seed = 42;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
    const valid = crlf(INVITE);
    for (let i = 0; i < 2000; i++) {
      const b = Buffer.from(valid);
      const flips = 1 + Math.floor(rnd() * 8);
      for (let j = 0; j < flips; j++) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
      expect(() => parseMessage(b.subarray(0, Math.floor(rnd() * b.length)))).not.toThrow();
    }
  });
});

describe('header parsers', () => {
  it('parses name-addr and addr-spec', () => {
    expect(parseNameAddr('<sip:a@b;transport=tcp>;tag=x;foo')).toMatchObject({
      displayName: undefined,
      uri: 'sip:a@b;transport=tcp',
      tag: 'x',
      params: { tag: 'x', foo: null },
    });
    // addr-spec: ;tag belongs to the header, not the URI (RFC 3261 20.10)
    expect(parseNameAddr('sip:+44123@example.com;tag=t1')).toMatchObject({ uri: 'sip:+44123@example.com', tag: 't1' });
    expect(parseNameAddr('"A \\"quoted\\" <name>" <sip:a@b>')).toMatchObject({ displayName: 'A "quoted" <name>', uri: 'sip:a@b' });
    expect(parseNameAddr('Bob <sips:bob@biloxi.com>')).toMatchObject({ displayName: 'Bob', uri: 'sips:bob@biloxi.com' });
    expect(parseNameAddr('')).toBeUndefined();
    expect(parseNameAddr('<sip:a@b')).toBeUndefined();
  });

  it('parses CSeq', () => {
    expect(parseCSeq('314159 INVITE')).toEqual({ seq: 314159, method: 'INVITE' });
    expect(parseCSeq('1')).toBeUndefined();
    expect(parseCSeq('-1 INVITE')).toBeUndefined();
  });

  it('parses Via params (branch, rport, received)', () => {
    const v = parseVia('SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds;rport=5061;received=192.0.2.4');
    expect(v).toMatchObject({ transport: 'UDP', host: 'pc33.atlanta.com', port: undefined, branch: 'z9hG4bK776asdhds' });
    expect(v?.params).toMatchObject({ rport: '5061', received: '192.0.2.4' });
    expect(parseVia('SIP/2.0/UDP host:notaport;branch=1')).toBeUndefined();
  });

  it('parses SIP URIs', () => {
    expect(parseSipUri('sip:+447700900000@[::1]:5080;user=phone;transport=tcp?x=y')).toMatchObject({
      scheme: 'sip',
      user: '+447700900000',
      host: '[::1]',
      port: 5080,
      params: { user: 'phone', transport: 'tcp' },
    });
    expect(parseSipUri('sip:trunk.example.net')).toMatchObject({ host: 'trunk.example.net', port: undefined, user: undefined });
    expect(parseSipUri('http://x')).toBeUndefined();
  });
});

describe('serializeMessage', () => {
  it('round-trips through the parser and computes Content-Length', () => {
    const req: SipRequest = {
      kind: 'request',
      method: 'INVITE',
      uri: 'sip:+447700900000@127.0.0.1:5060;user=phone',
      headers: [
        hdr('v', 'SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKrt;rport'),
        hdr('max-forwards', '70'),
        hdr('from', '<sip:+441@example.com;user=phone>;tag=ft'),
        hdr('to', '<sip:+447700900000@127.0.0.1:5060;user=phone>'),
        hdr('call-id', 'rt-1'),
        hdr('cseq', '1 INVITE'),
        hdr('content-length', '999'),
        hdr('content-type', 'application/sdp'),
      ],
      body: 'v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n',
    };
    const wire = serializeMessage(req);
    const text = wire.toString();
    expect(text.startsWith('INVITE sip:+447700900000@127.0.0.1:5060;user=phone SIP/2.0\r\nVia: ')).toBe(true);
    expect(text).toContain('\r\nCall-ID: rt-1\r\n');
    expect(text).toContain('\r\nCSeq: 1 INVITE\r\n');
    expect(text).toContain(`\r\nContent-Length: ${Buffer.byteLength(req.body ?? '')}\r\n\r\n`);
    expect(text).not.toContain('999');
    const m = ok(parseMessage(wire, { datagram: false }));
    expect(m.kind === 'request' && m.method).toBe('INVITE');
    expect(m.body).toBe(req.body);
    expect(m.headers.filter((h) => h.key !== 'content-length').map((h) => [h.name, h.value])).toEqual(
      req.headers.filter((h) => h.key !== 'content-length').map((h) => [h.name, h.value]),
    );
    expect(serializeMessage(m).equals(wire)).toBe(true);
  });
});

describe('StreamFramer (TCP)', () => {
  const msg = (callId: string, body = ''): Buffer =>
    crlf([
      'SIP/2.0 200 OK',
      'Via: SIP/2.0/TCP h;branch=z9hG4bK1',
      'From: <sip:a@b>;tag=1',
      'To: <sip:x@y>;tag=2',
      `Call-ID: ${callId}`,
      'CSeq: 1 INVITE',
      `Content-Length: ${Buffer.byteLength(body)}`,
      '',
      body,
    ]);

  it('frames several messages split across arbitrary chunks, skipping CRLF keep-alives', () => {
    const all = Buffer.concat([Buffer.from('\r\n\r\n'), msg('a', 'v=0\r\n'), msg('b'), Buffer.from('\r\n'), msg('c', 'xyz')]);
    for (const chunkSize of [1, 7, 64, all.length]) {
      const framer = new StreamFramer();
      const got: string[] = [];
      for (let i = 0; i < all.length; i += chunkSize) {
        const r = framer.push(all.subarray(i, i + chunkSize));
        expect(r.error).toBeUndefined();
        for (const m of r.messages) got.push(m.callId + ':' + (m.body ?? ''));
      }
      expect(got).toEqual(['a:v=0\r\n', 'b:', 'c:xyz']);
    }
  });

  it('drops a message that frames but does not parse, and reads the next one (the stream is still in step)', () => {
    const bad = Buffer.from(msg('b').toString().replace('CSeq: 1 INVITE', 'CSeq: 1 INVITE\r\nX-Vendor[1]: foo'));
    const r = new StreamFramer().push(Buffer.concat([msg('a'), bad, msg('c', 'xyz')]));
    expect(r.error).toBeUndefined();
    expect(r.messages.map((m) => m.callId)).toEqual(['a', 'c']);
    expect(r.dropped).toHaveLength(1);
  });

  it('reads a folded Content-Length (RFC 3261 7.3.1), and a continuation line is not a header of its own', () => {
    const folded = Buffer.from(msg('a', 'xyz').toString().replace('Content-Length: 3', 'Content-Length:\r\n 3'));
    const r = new StreamFramer().push(Buffer.concat([folded, msg('b')]));
    expect([r.error, r.messages.map((m) => `${m.callId}:${m.body ?? ''}`)]).toEqual([undefined, ['a:xyz', 'b:']]);
    const subject = Buffer.from(msg('c').toString().replace('CSeq: 1 INVITE', 'CSeq: 1 INVITE\r\nSubject: hello\r\n l: 99'));
    const s = new StreamFramer().push(subject);
    expect([s.error, s.messages.map((m) => m.callId)]).toEqual([undefined, ['c']]);
  });

  it('reports a bad frame (missing / bad / oversized Content-Length, garbage)', () => {
    const noCl = Buffer.from(msg('a').toString().replace('Content-Length: 0\r\n', ''));
    expect(new StreamFramer().push(noCl).error).toMatch(/Content-Length/);
    expect(new StreamFramer().push(Buffer.from(msg('a').toString().replace('Content-Length: 0', 'Content-Length: -5'))).error).toMatch(
      /Content-Length/,
    );
    expect(new StreamFramer().push(Buffer.from(msg('a').toString().replace('Content-Length: 0', 'Content-Length: 9999999'))).error).toMatch(
      /Content-Length/,
    );
    expect(new StreamFramer().push(Buffer.from('hello\r\n\r\n')).error).toBeTruthy();
    expect(new StreamFramer().push(Buffer.alloc(20_000, 0x41)).error).toMatch(/too large/);
  });
});
