import { describe, expect, it } from 'vitest';
import { buildOffer, MediaError, parseAnswer } from '../../../src/media/sdp.js';

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

  it('does not send to an answer that is sendonly or inactive', () => {
    expect(parseAnswer(answer('m=audio 40000 RTP/AVP 0', 'a=sendonly')).sendAllowed).toBe(false);
    expect(parseAnswer(answer('m=audio 40000 RTP/AVP 0', 'a=recvonly')).sendAllowed).toBe(true);
  });

  it('rejects answers with no common codec, a rejected stream or no address', () => {
    expect(() => parseAnswer(answer('m=audio 40000 RTP/AVP 18', 'a=rtpmap:18 G729/8000'))).toThrow(MediaError);
    expect(() => parseAnswer(answer('m=audio 0 RTP/AVP 0'))).toThrow(/no active audio/);
    expect(() => parseAnswer(answer('m=audio 40000 RTP/AVP 0', '', 's=x'))).toThrow(/no connection address/);
    expect(() => parseAnswer('')).toThrow(MediaError);
  });
});
