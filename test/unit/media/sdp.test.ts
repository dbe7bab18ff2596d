import { describe, expect, it } from 'vitest';
import { answerReoffer, buildOffer, continueOrigin, MediaError, parseAnswer } from '../../../src/media/sdp.js';

describe('SDP offer', () => {
  it('offers PCMU, PCMA and telephone-event/8000 on our advertised host and RTP port', () => {
    const sdp = buildOffer({ host: '192.0.2.10', port: 20002, sessionId: 42 });
    const lines = sdp.trim().split(/\r\n/);
    expect(lines).toContain('v=0');
    expect(lines).toContain('o=flashverify 42 1 IN IP4 192.0.2.10');
    expect(lines).toContain('c=IN IP4 192.0.2.10');
    expect(lines).toContain('m=audio 20002 RTP/AVP 0 8 101');
    expect(lines).toContain('a=rtpmap:0 PCMU/8000');
    expect(lines).toContain('a=rtpmap:8 PCMA/8000');
    expect(lines).toContain('a=rtpmap:101 telephone-event/8000');
    expect(lines).toContain('a=fmtp:101 0-16');
    expect(lines).toContain('a=ptime:20');
    expect(lines).toContain('a=sendrecv');
  });
});

describe('SDP answer', () => {
  const answer = (m: string, extra = '', c = 'c=IN IP4 198.51.100.7') =>
    ['v=0', 'o=- 1 1 IN IP4 198.51.100.7', 's=-', c, 't=0 0', m, ...extra.split('\n').filter(Boolean), ''].join('\r\n');

  it("picks the answerer's first codec of ours, with its address and port", () => {
    const n = parseAnswer(answer('m=audio 40000 RTP/AVP 8 0 101', 'a=rtpmap:8 PCMA/8000\na=rtpmap:0 PCMU/8000\na=rtpmap:101 telephone-event/8000'));
    expect(n).toEqual({ codec: 'PCMA', payloadType: 8, address: '198.51.100.7', port: 40000, telephoneEventPt: 101, sendAllowed: true });
  });

  it('knows static payload types without rtpmap and prefers a media-level c=', () => {
    const n = parseAnswer(answer('m=audio 40002 RTP/AVP 0', 'c=IN IP4 203.0.113.5'));
    expect(n).toMatchObject({ codec: 'PCMU', payloadType: 0, address: '203.0.113.5', port: 40002 });
  });

  it('refuses an answer the announcement could not reach: sendonly or inactive, c=0.0.0.0, SRTP, the other IP family than our socket', () => {
    expect(() => parseAnswer(answer('m=audio 40000 RTP/AVP 0', 'a=sendonly'))).toThrow(/a=sendonly: the far end takes no audio/);
    expect(() => parseAnswer(answer('m=audio 40000 RTP/AVP 0', 'a=inactive'))).toThrow(/a=inactive/);
    expect(() => parseAnswer(answer('m=audio 40000 RTP/AVP 0', '', 'c=IN IP4 0.0.0.0'))).toThrow(/address is 0\.0\.0\.0/);
    expect(() => parseAnswer(answer('m=audio 40000 RTP/AVP 0', '', 'c=IN IP6 ::'))).toThrow(/address is ::/);
    expect(() => parseAnswer(answer('m=audio 40000 RTP/SAVP 0', 'a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz'))).toThrow(/RTP\/SAVP, and we send plain RTP/);
    expect(() => parseAnswer(answer('m=audio 40000 RTP/AVP 0', '', 'c=IN IP6 ::1'), { family: 4 })).toThrow(/IPv6 and our RTP socket is IPv4/);
    expect(() => parseAnswer(answer('m=audio 40000 RTP/AVP 0'), { family: 6 })).toThrow(/IPv4 and our RTP socket is IPv6/);
    // The literal decides, whatever its line says.
    expect(() => parseAnswer(answer('m=audio 40000 RTP/AVP 0', '', 'c=IN IP4 ::1'), { family: 4 })).toThrow(/IPv6 and our RTP socket is IPv4/);
    // RTP/AVPF is plain RTP on the wire: taken; SAVPF is not.
    expect(parseAnswer(answer('m=audio 40000 RTP/AVPF 0'), { family: 4 }).codec).toBe('PCMU');
    expect(() => parseAnswer(answer('m=audio 40000 RTP/SAVPF 0'))).toThrow(/RTP\/SAVPF, and we send plain RTP/);
    // A port no socket can send to: refused here, not thrown by the RTP thread's connect (which ended its other calls).
    expect(() => parseAnswer(answer('m=audio 70000 RTP/AVP 0'))).toThrow(/audio port 70000 is not a UDP port \(1 to 65535\)/);
    // They receive only, or both: we may send.
    expect(parseAnswer(answer('m=audio 40000 RTP/AVP 0', 'a=recvonly'), { family: 4 }).sendAllowed).toBe(true);
    expect(parseAnswer(answer('m=audio 40000 RTP/AVP 0', '', 'c=IN IP6 2001:db8::7'), { family: 6 }).address).toBe('2001:db8::7');
  });

  it('rejects answers with no common codec, a rejected stream or no address', () => {
    expect(() => parseAnswer(answer('m=audio 40000 RTP/AVP 18', 'a=rtpmap:18 G729/8000'))).toThrow(MediaError);
    expect(() => parseAnswer(answer('m=audio 0 RTP/AVP 0'))).toThrow(/no active audio/);
    expect(() => parseAnswer(answer('m=audio 40000 RTP/AVP 0', '', 's=x'))).toThrow(/no connection address/);
    expect(() => parseAnswer('')).toThrow(MediaError);
  });
});

describe('SDP re-offer (a re-INVITE in an established call, RFC 3264 8)', () => {
  const local = { host: '127.0.0.1', port: 30000, sessionId: 5, sessionVersion: 2, codec: 'PCMU' as const };
  const offer = (audio: string, extra = ''): string =>
    `v=0\r\no=sbc 1 2 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n${extra}${audio}`;

  it('media moved: the new address and port, our codec kept, the answer sendrecv with its telephone-event', () => {
    const { media, answer } = answerReoffer(offer('m=audio 41000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n'), local);
    expect(media).toEqual({ codec: 'PCMU', payloadType: 0, address: '192.0.2.9', port: 41000, telephoneEventPt: 101, sendAllowed: true });
    expect(answer).toContain('o=flashverify 5 2 IN IP4 127.0.0.1\r\n');
    expect(answer).toMatch(/\r\nm=audio 30000 RTP\/AVP 0 101\r\n/);
    expect(answer).toContain('a=sendrecv');
    expect(answer).not.toMatch(/PCMA/);
  });

  it('hold (sendonly, or c=0.0.0.0): recvonly answered, nothing to send; inactive answered inactive', () => {
    const held = answerReoffer(offer('m=audio 41000 RTP/AVP 0\r\na=sendonly\r\n'), local);
    expect([held.media.sendAllowed, /a=recvonly/.test(held.answer)]).toEqual([false, true]);
    const old = answerReoffer(offer('m=audio 41000 RTP/AVP 0\r\n').replace('c=IN IP4 192.0.2.9', 'c=IN IP4 0.0.0.0'), local);
    expect(old.media.sendAllowed).toBe(false);
    const inactive = answerReoffer(offer('m=audio 41000 RTP/AVP 0\r\na=inactive\r\n'), local);
    expect([inactive.media.sendAllowed, /a=inactive/.test(inactive.answer)]).toEqual([false, true]);
    // They receive only: we may send.
    expect(answerReoffer(offer('m=audio 41000 RTP/AVP 0\r\na=recvonly\r\n'), local).answer).toContain('a=sendonly');
  });

  it('as many m= lines as the offer, in order: the others declined (port 0)', () => {
    const { answer, media } = answerReoffer(offer('m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\nm=audio 41000 RTP/AVP 0\r\n'), local);
    expect(answer.match(/^m=.*$/gm)).toEqual(['m=video 0 RTP/AVP 96', 'm=audio 30000 RTP/AVP 0']);
    expect(media.port).toBe(41000);
  });

  it('an SRTP stream, or one at an address of the other family than our socket: MediaError (488), naming why', () => {
    expect(() => answerReoffer(offer('m=audio 41000 RTP/SAVP 0\r\n'), local)).toThrow(/cannot be taken: its audio is RTP\/SAVP/);
    expect(() => answerReoffer(offer('m=audio 41000 RTP/AVP 0\r\n').replace('c=IN IP4 192.0.2.9', 'c=IN IP6 ::1'), local, { family: 4 })).toThrow(/IPv6 and our RTP socket is IPv4/);
    expect(() => answerReoffer(offer('m=audio 70000 RTP/AVP 0\r\n'), local)).toThrow(/cannot be taken: its audio port 70000 is not a UDP port/);
    // A plain stream after an SRTP one is taken.
    expect(answerReoffer(offer('m=audio 41000 RTP/SAVP 0\r\nm=audio 41002 RTP/AVP 0\r\n'), local, { family: 4 }).media.port).toBe(41002);
  });

  it('no stream with the codec the call plays in (a stream cannot change codec mid-announcement): MediaError', () => {
    expect(() => answerReoffer(offer('m=audio 41000 RTP/AVP 8\r\n'), local)).toThrow(MediaError);
    expect(() => answerReoffer('garbage', local)).toThrow(MediaError);
  });
});

describe('continueOrigin (RFC 3264 8: an offer in a dialog keeps the o= line the far end knows)', () => {
  const fs = (version: number, port: number) =>
    `v=0\r\no=FreeSWITCH 1700000000 ${version} IN IP4 10.0.0.5\r\ns=FreeSWITCH\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio ${port} RTP/AVP 0 101\r\na=sendrecv\r\n`;

  it('nothing changed but the producer\'s own version: the version the far end has', () => {
    expect(continueOrigin(fs(1700000001, 20000), fs(1700000003, 20000))).toBe(fs(1700000001, 20000));
  });

  it('the media changed: the version one up from the far end\'s, whatever the producer counted', () => {
    expect(continueOrigin(fs(1700000001, 20000), fs(1700000005, 20002))).toBe(fs(1700000002, 20002));
  });

  it('the user, session id and address of the earlier o= line are kept', () => {
    const earlier = fs(7, 20000).replace('o=FreeSWITCH 1700000000 7 IN IP4 10.0.0.5', 'o=- 42 7 IN IP4 192.0.2.1');
    const next = continueOrigin(earlier, fs(9, 20002));
    expect(next.split('\r\n')[1]).toBe('o=- 42 8 IN IP4 192.0.2.1');
    expect(next.replace(/^o=.*$/m, '')).toBe(fs(9, 20002).replace(/^o=.*$/m, ''));
  });
});
