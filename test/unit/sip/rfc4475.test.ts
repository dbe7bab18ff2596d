import { describe, expect, it } from 'vitest';
import { getHeader, getHeaders } from '../../../src/sip/message.js';
import { parseMessage, parseNameAddr, parseVia, StreamFramer, type ParseResult } from '../../../src/sip/parser.js';
import { allTorture, loadTorture, tortureNames } from '../../helpers/rfc4475.js';

/**
 * RFC 4475 torture messages (test/fixtures/rfc4475): the valid ones parse,
 * the invalid ones are rejected with a reason and never make the parser throw,
 * and the application-layer ones (3.3, 3.4) parse so that the element acting
 * on them can answer, except the few that are syntax errors for a parser.
 */
function ok(r: ParseResult) {
  if (!r.ok) throw new Error(`expected success, got: ${r.reason}`);
  return r.message;
}

/**
 * Invalid messages whose fault a UAC's parser does not look at: the value is
 * syntactically a header or URI like any other, and the rule broken is one a
 * proxy or registrar applies (RFC 4475 says "should be rejected" by the element
 * that acts on it). The embedded UAC never acts on these fields.
 */
const SEMANTIC_ONLY: Record<string, string> = {
  baddate: 'Date in EST instead of GMT (3.1.2.12): the UAC never reads Date',
  escruri: 'escaped headers in a Request-URI (3.1.2.11): a UAS/proxy rule; the UAC never routes on it',
  scalar02: 'overlarge Expires and Max-Forwards (3.1.2.4): the UAC never reads either',
  regbadct:
    "a REGISTER's Contact with an escaped header but no <> (3.1.2.13): a registrar rule; the UA never reads a request's Contact",
  badaspec:
    'LWS inside the <> of To (3.1.2.14): the RFC allows a proxy to answer 400; a UA only must not break, and the URI is unambiguous once trimmed',
};

/** 3.3 messages that are syntax errors for a parser: rejected, with this reason. */
const SEMANTIC_REJECTED: Record<string, RegExp> = {
  insuf: /^missing (Call-ID|CSeq|From|To|Via)$/, // 3.3.1
  multi01: /^multiple (Call-ID|CSeq|From|To) header fields$/, // 3.3.8
  mcl01: /^multiple Content-Length header fields$/, // 3.3.9
};

describe('RFC 4475 valid messages (3.1.1, 3.2)', () => {
  it.each(tortureNames('valid'))('%s parses', (name) => {
    const r = parseMessage(loadTorture('valid', name));
    expect(r.ok, r.ok ? '' : r.reason).toBe(true);
  });

  it('wsinv: folding, LWS around every separator, compact forms, leading zeros', () => {
    const m = ok(parseMessage(loadTorture('valid', 'wsinv')));
    expect(m.kind === 'request' && m.method).toBe('INVITE');
    expect(m.to).toMatchObject({ uri: 'sip:vivekg@chair-dnrc.example.com', tag: '1918181833n' });
    expect(m.from.tag).toBe('98asjd8');
    expect(m.cseq).toEqual({ seq: 9, method: 'INVITE' });
    expect(m.callId).toBe('wsinv.ndaksdj@192.0.2.1');
    const vias = getHeaders(m, 'via').map((v) => parseVia(v));
    expect(vias.map((v) => [v?.transport, v?.host, v?.branch])).toEqual([
      ['UDP', '192.0.2.2', '390skdjuw'],
      ['TCP', 'spindle.example.com', 'z9hG4bK9ikj8'],
      ['UDP', '192.168.255.111', 'z9hG4bK30239'],
    ]);
    expect(m.body?.length).toBe(150);
  });

  it('intmeth: every token character in the method, escaped controls in a quoted display name, UTF-8 values', () => {
    const method = "!interesting-Method0123456789_*+`.%indeed'~";
    const m = ok(parseMessage(loadTorture('valid', 'intmeth')));
    expect(m.kind === 'request' && m.method).toBe(method);
    expect(m.kind === 'request' && m.uri).toBe(
      "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com",
    );
    expect(m.cseq).toEqual({ seq: 139122385, method });
    expect(m.callId).toBe("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{");
    expect(m.via.branch).toBe("z9hG4bK-.!%66*_+`'~");
    // The quoted-pairs \BEL \NUL \DEL stand for the octets themselves.
    expect(m.to.displayName).toBe('BEL:\x07 NUL:\x00 DEL:\x7f');
    expect(m.to.uri).toBe("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com");
    expect(m.to.tag).toBeUndefined();
    expect(m.from.displayName).toBe("token1~` token2'+_ token3*%!.-");
    expect(m.from.tag).toBe("_token~1'+`*%!-.");
    expect(m.from.params["fromparam''~+*_!.-%"]).toBe('работающий');
    expect(getHeader(m, "extensionHeader-!.%*+_`'~")).toBe('\ufeff大停電');
  });

  it('longreq: long values intact, all 33 Vias in order under every spelling of the name', () => {
    const m = ok(parseMessage(loadTorture('valid', 'longreq')));
    expect(m.kind === 'request' && m.method).toBe('INVITE');
    expect(m.to.displayName).toBe(`I have a user name of ${'extreme'.repeat(20)} proportion`);
    expect(m.to.uri).toMatch(/^sip:user@example\.com:6000;unknownparam1=very(long){20}value;/);
    expect(m.to.tag).toBeUndefined();
    expect(m.from.uri).toBe(`sip:amazinglylongcallername${'amazinglylongcallername'.repeat(8)}@example.net`);
    expect(m.from.tag).toBe('12982424');
    expect(m.from.params[`unknownheaderparam${'name'.repeat(20)}`]).toBe(`unknownheaderparamvalue${'value'.repeat(30)}`);
    expect(m.from.params[`unknownvaluelessparam${'paramname'.repeat(20)}`]).toBeNull();
    expect(m.callId).toBe(`longreq.one${'really'.repeat(36)}longcallid`);
    expect(getHeader(m, `Unknown-${'Long'.repeat(25)}Header`)).toBe(
      `unknown-${'long'.repeat(25)}value; unknown-${'long'.repeat(25)}parameter-name = unknown-${'long'.repeat(25)}parameter-value`,
    );
    const vias = getHeaders(m, 'via').map((v) => parseVia(v));
    expect(vias.map((v) => v?.host)).toEqual(Array.from({ length: 33 }, (_, i) => `sip${33 - i}.example.com`));
    expect(vias[0]?.branch).toBe(`z9hG4bK${'longbranch'.repeat(20)}`);
    expect(m.via.host).toBe('sip33.example.com');
    expect(parseNameAddr(getHeader(m, 'contact')!)?.uri).toBe(
      `sip:amazinglylongcallername${'amazinglylongcallername'.repeat(8)}@host5.example.net`,
    );
    expect(m.body?.length).toBe(150);
  });

  it('mpart01: a multipart body with a binary part is framed by Content-Length, its octets untouched', () => {
    const data = loadTorture('valid', 'mpart01');
    const m = ok(parseMessage(data));
    expect(m.kind === 'request' && m.method).toBe('MESSAGE');
    const length = Number(getHeader(m, 'content-length'));
    const bodyStart = data.indexOf('\r\n\r\n') + 4;
    expect(length).toBe(data.length - bodyStart); // the fixture's Content-Length is exact
    expect(m.bodyBytes?.length).toBe(length);
    expect(m.bodyBytes?.equals(data.subarray(bodyStart))).toBe(true);
    // The binary part holds NUL, bare CR/LF and octets that are not UTF-8 (so `body`, decoded, differs).
    const binary = m.bodyBytes!.subarray(m.bodyBytes!.indexOf('\r\n\r\n0\x82', 0, 'latin1') + 4);
    expect(binary[0]).toBe(0x30);
    for (const octet of [0x00, 0x0a, 0x0d, 0xff, 0xfe, 0x80]) expect(binary.includes(octet)).toBe(true);
    expect(Buffer.byteLength(m.body!, 'utf8')).not.toBe(length);
    expect(m.bodyBytes!.subarray(-22).toString('latin1')).toBe('--7a9cbec02ceef655--\r\n');
    // On a stream the framer cuts at the same place and keeps the next message.
    const framed = new StreamFramer().push(Buffer.concat([data, data]));
    expect(framed.error).toBeUndefined();
    expect(framed.messages.map((x) => x.bodyBytes?.equals(m.bodyBytes!))).toEqual([true, true]);
  });

  it('dblreq: a datagram holding two requests yields the first; bytes past Content-Length are ignored', () => {
    const m = ok(parseMessage(loadTorture('valid', 'dblreq')));
    expect(m.kind === 'request' && m.method).toBe('REGISTER');
    expect(m.body).toBeUndefined();
  });

  it('unreason / noreason: any UTF-8 reason phrase, or none', () => {
    const u = ok(parseMessage(loadTorture('valid', 'unreason')));
    expect(u.kind === 'response' && u.status).toBe(200);
    const n = ok(parseMessage(loadTorture('valid', 'noreason')));
    expect(n.kind === 'response' && [n.status, n.reason.trim()]).toEqual([100, '']);
  });
});

describe('RFC 4475 invalid messages (3.1.2)', () => {
  it.each(tortureNames('invalid').filter((n) => !(n in SEMANTIC_ONLY)))('%s is rejected with a reason', (name) => {
    const r = parseMessage(loadTorture('invalid', name));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).not.toMatch(/parser exception/);
  });

  it.each(Object.keys(SEMANTIC_ONLY))('%s parses without harm (a rule for the element acting on it)', (name) => {
    expect(parseMessage(loadTorture('invalid', name)).ok).toBe(true);
  });

  it('mismatch02: an unknown method whose CSeq names another method', () => {
    const r = parseMessage(loadTorture('invalid', 'mismatch02'));
    expect(r.ok ? '' : r.reason).toBe('CSeq method does not match request method');
  });

  it('every invalid message also fails to frame on a stream without throwing', () => {
    for (const name of tortureNames('invalid')) {
      expect(() => parseMessage(loadTorture('invalid', name), { datagram: false })).not.toThrow();
    }
  });
});

describe('RFC 4475 application-layer messages (3.3, 3.4)', () => {
  it.each(tortureNames('semantic').filter((n) => !(n in SEMANTIC_REJECTED)))(
    '%s is well-formed: it parses, so the element acting on it can answer',
    (name) => {
      const r = parseMessage(loadTorture('semantic', name));
      expect(r.ok, r.ok ? '' : r.reason).toBe(true);
    },
  );

  it.each(Object.entries(SEMANTIC_REJECTED))('%s is a syntax error for a parser: rejected', (name, reason) => {
    const r = parseMessage(loadTorture('semantic', name));
    expect(r.ok ? 'parsed' : r.reason).toMatch(reason);
    expect(parseMessage(loadTorture('semantic', name), { datagram: false }).ok).toBe(false);
  });

  it('a single repeated single-valued field is enough to reject (no first-one-wins)', () => {
    const base = loadTorture('semantic', 'zeromf').toString('latin1');
    const extra: Record<string, string> = {
      'Call-ID': 'i: other@192.0.2.2',
      CSeq: 'CSeq: 39234322 OPTIONS',
      From: 'f: sip:other@example.net;tag=x',
      To: 't: sip:other@example.com',
    };
    for (const [name, line] of Object.entries(extra)) {
      const r = parseMessage(Buffer.from(base.replace('Max-Forwards: 0\r\n', `Max-Forwards: 0\r\n${line}\r\n`), 'latin1'));
      expect(r.ok ? 'parsed' : r.reason).toBe(`multiple ${name} header fields`);
    }
    // Equal Content-Length values are still two: rejected in a datagram and by the stream framer.
    const twice = Buffer.from(base.replace('Content-Length: 0\r\n', 'Content-Length: 0\r\nl: 0\r\n'), 'latin1');
    expect(parseMessage(twice).ok).toBe(false);
    expect(new StreamFramer().push(twice).error).toBe('bad Content-Length');
  });

  it('inv2543: RFC 2543 syntax (no branch cookie, no From tag, no Max-Forwards, no Content-Length) parses', () => {
    const m = ok(parseMessage(loadTorture('semantic', 'inv2543')));
    expect(m.via).toMatchObject({ host: 'iftgw.example.com', branch: undefined });
    expect(m.from.tag).toBeUndefined();
    expect(getHeader(m, 'max-forwards')).toBeUndefined();
    expect(m.body?.startsWith('v=0\r\n')).toBe(true);
  });

  it('bcast: the second Via names the broadcast address; the parser only decodes the top one', () => {
    const m = ok(parseMessage(loadTorture('semantic', 'bcast')));
    expect(m.kind === 'response' && m.status).toBe(200);
    expect(m.via.host).toBe('192.0.2.198');
    expect(parseVia(getHeaders(m, 'via')[1]!)?.host).toBe('255.255.255.255');
  });
});

it('the fixtures hold all 49 messages of RFC 4475, each once', () => {
  const names = allTorture().map((t) => t.name);
  expect(names).toHaveLength(49);
  expect(new Set(names).size).toBe(49);
});
