import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { getHeaders } from '../../../src/sip/message.js';
import { parseMessage, parseVia, type ParseResult } from '../../../src/sip/parser.js';

/**
 * RFC 4475 torture messages (test/fixtures/rfc4475): the valid ones parse,
 * the invalid ones are rejected with a reason and never make the parser throw.
 */
const DIR = resolve(import.meta.dirname, '..', '..', 'fixtures', 'rfc4475');
const load = (kind: 'valid' | 'invalid', name: string): Buffer =>
  Buffer.from(readFileSync(join(DIR, kind, `${name}.sip`), 'utf8').replace(/\r?\n/g, '\r\n'), 'utf8');
const files = (kind: 'valid' | 'invalid') =>
  readdirSync(join(DIR, kind))
    .filter((f) => f.endsWith('.sip'))
    .map((f) => f.slice(0, -4));

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
  baddate: 'Date in EST instead of GMT (3.1.2.14): the UAC never reads Date',
  escruri: 'escaped headers in a Request-URI (3.1.2.10): a UAS/proxy rule; the UAC never routes on it',
  scalar02: 'overlarge Expires and Max-Forwards (3.1.2.4): the UAC never reads either',
};

describe('RFC 4475 valid messages (3.1.1)', () => {
  it.each(files('valid'))('%s parses', (name) => {
    const r = parseMessage(load('valid', name));
    expect(r.ok, r.ok ? '' : r.reason).toBe(true);
  });

  it('wsinv: folding, LWS around every separator, compact forms, leading zeros', () => {
    const m = ok(parseMessage(load('valid', 'wsinv')));
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

  it('dblreq: a datagram holding two requests yields the first; bytes past Content-Length are ignored', () => {
    const m = ok(parseMessage(load('valid', 'dblreq')));
    expect(m.kind === 'request' && m.method).toBe('REGISTER');
    expect(m.body).toBeUndefined();
  });

  it('unreason / noreason: any UTF-8 reason phrase, or none', () => {
    const u = ok(parseMessage(load('valid', 'unreason')));
    expect(u.kind === 'response' && u.status).toBe(200);
    const n = ok(parseMessage(load('valid', 'noreason')));
    expect(n.kind === 'response' && [n.status, n.reason.trim()]).toEqual([100, '']);
  });
});

describe('RFC 4475 invalid messages (3.1.2)', () => {
  it.each(files('invalid').filter((n) => !(n in SEMANTIC_ONLY)))('%s is rejected with a reason', (name) => {
    const r = parseMessage(load('invalid', name));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).not.toMatch(/parser exception/);
  });

  it.each(Object.keys(SEMANTIC_ONLY))('%s parses without harm (a rule for the element acting on it)', (name) => {
    expect(parseMessage(load('invalid', name)).ok).toBe(true);
  });

  it('every invalid message also fails to frame on a stream without throwing', () => {
    for (const name of files('invalid')) {
      expect(() => parseMessage(load('invalid', name), { datagram: false })).not.toThrow();
    }
  });
});
