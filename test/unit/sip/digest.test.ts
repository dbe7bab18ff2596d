import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { computeDigest, isSupportedChallenge, parseDigestChallenge } from '../../../src/sip/digest.js';

const md5 = (s: string): string => createHash('md5').update(s).digest('hex');
const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');

describe('digest authentication', () => {
  it('RFC 2617 section 3.5 example (Mufasa, qop=auth)', () => {
    const challenge = parseDigestChallenge(
      'Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"',
    );
    expect(challenge).toEqual({
      realm: 'testrealm@host.com',
      nonce: 'dcd98b7102dd2f0e8b11d0f600bfb0c093',
      opaque: '5ccc069c403ebaf9f0171e9517f40e41',
      algorithm: 'MD5',
      qop: ['auth', 'auth-int'],
      stale: false,
    });
    if (challenge === undefined) return;
    const d = computeDigest(
      challenge,
      { username: 'Mufasa', password: 'Circle Of Life' },
      { method: 'GET', uri: '/dir/index.html' },
      { cnonce: '0a4f113b', nc: 1 },
    );
    expect(d.response).toBe('6629fae49393a05397450978507c4ef1');
    expect(d.header).toBe(
      'Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", ' +
        'uri="/dir/index.html", response="6629fae49393a05397450978507c4ef1", algorithm=MD5, ' +
        'opaque="5ccc069c403ebaf9f0171e9517f40e41", qop=auth, nc=00000001, cnonce="0a4f113b"',
    );
  });

  it('no qop (RFC 2069 compatibility): response = MD5(HA1:nonce:HA2), no cnonce/nc', () => {
    const challenge = parseDigestChallenge('Digest realm="sip.example.net", nonce="abc123", algorithm=MD5');
    expect(challenge?.qop).toEqual([]);
    if (challenge === undefined) return;
    const d = computeDigest(challenge, { username: 'alice', password: 's3cret' }, { method: 'INVITE', uri: 'sip:+447700900000@sip.example.net;user=phone' });
    const ha1 = md5('alice:sip.example.net:s3cret');
    const ha2 = md5('INVITE:sip:+447700900000@sip.example.net;user=phone');
    expect(d.response).toBe(md5(`${ha1}:abc123:${ha2}`));
    expect(d.header).not.toMatch(/cnonce|nc=|qop/);
    expect(d.header).toContain('uri="sip:+447700900000@sip.example.net;user=phone"');
  });

  it('parses stale, lower-case scheme/algorithm, and rejects non-Digest challenges', () => {
    const c = parseDigestChallenge('digest realm="r", nonce="n2", stale=TRUE, algorithm=md5-sess, qop=auth');
    expect(c).toMatchObject({ stale: true, algorithm: 'MD5-SESS', qop: ['auth'] });
    expect(c !== undefined && isSupportedChallenge(c)).toBe(true);
    expect(parseDigestChallenge('Basic realm="r"')).toBeUndefined();
    expect(parseDigestChallenge('Digest nonce="n"')).toBeUndefined();
    const aka = parseDigestChallenge('Digest realm="r", nonce="n", algorithm=AKAv1-MD5');
    expect(aka !== undefined && isSupportedChallenge(aka)).toBe(false);
  });

  it('MD5-sess and nc formatting', () => {
    const c = parseDigestChallenge('Digest realm="r", nonce="n", algorithm=MD5-sess, qop="auth"');
    if (c === undefined) throw new Error('parse');
    const d = computeDigest(c, { username: 'u', password: 'p' }, { method: 'BYE', uri: 'sip:x' }, { cnonce: 'cn', nc: 26 });
    const ha1 = md5(`${md5('u:r:p')}:n:cn`);
    expect(d.response).toBe(md5(`${ha1}:n:0000001a:cn:auth:${md5('BYE:sip:x')}`));
    expect(d.header).toContain('nc=0000001a');
  });

  it.each([
    ['MD5', md5],
    ['SHA-256', sha256],
  ] as const)('qop=auth-int (%s): HA2 = H(method:uri:H(entity-body)) over the body (RFC 2617 3.2.2.3, RFC 8760)', (algorithm, h) => {
    const c = parseDigestChallenge(`Digest realm="r", nonce="n", algorithm=${algorithm}, qop="auth-int"`);
    if (c === undefined) throw new Error('parse');
    const body = 'v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n';
    const uri = 'sip:+447700900000@sip.example.net;user=phone';
    const d = computeDigest(c, { username: 'u', password: 'p' }, { method: 'INVITE', uri, body }, { cnonce: 'cn', nc: 1 });
    const ha2 = h(`INVITE:${uri}:${h(body)}`);
    expect(d.response).toBe(h(`${h('u:r:p')}:n:00000001:cn:auth-int:${ha2}`));
    expect(d.header).toContain('qop=auth-int, nc=00000001, cnonce="cn"');
    // A request without a body hashes the empty string, so the two differ.
    const empty = computeDigest(c, { username: 'u', password: 'p' }, { method: 'INVITE', uri }, { cnonce: 'cn', nc: 1 });
    expect(empty.response).toBe(h(`${h('u:r:p')}:n:00000001:cn:auth-int:${h(`INVITE:${uri}:${h('')}`)}`));
    expect(empty.response).not.toBe(d.response);
  });

  it('"auth,auth-int" offered: auth is chosen, the body is not hashed', () => {
    const c = parseDigestChallenge('Digest realm="r", nonce="n", qop="auth-int,auth"');
    if (c === undefined) throw new Error('parse');
    const d = computeDigest(c, { username: 'u', password: 'p' }, { method: 'INVITE', uri: 'sip:x', body: 'v=0\r\n' }, { cnonce: 'cn', nc: 1 });
    expect(d.response).toBe(md5(`${md5('u:r:p')}:n:00000001:cn:auth:${md5('INVITE:sip:x')}`));
    expect(d.header).toContain('qop=auth,');
  });
});
