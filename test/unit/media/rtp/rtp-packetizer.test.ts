import { describe, expect, it } from 'vitest';
import { parseRtp, RtpPacketizer } from '../../../../src/media/rtp/rtp-packetizer.js';

describe('RtpPacketizer', () => {
  it('writes an RFC 3550 header: V=2, PT, marker on the first packet only, SSRC', () => {
    const p = new RtpPacketizer({ payloadType: 8, ssrc: 0xdeadbeef, sequence: 1000, timestamp: 5000 });
    const payload = new Uint8Array(160).fill(0xd5);
    const first = p.packet(payload);
    expect(first.length).toBe(172);
    expect(first[0]).toBe(0x80);
    expect(first[1]).toBe(0x80 | 8);
    expect(first.readUInt16BE(2)).toBe(1000);
    expect(first.readUInt32BE(4)).toBe(5000);
    expect(first.readUInt32BE(8)).toBe(0xdeadbeef);
    expect([...first.subarray(12)]).toEqual([...payload]);
    const second = parseRtp(p.packet(payload))!;
    expect(second).toMatchObject({ version: 2, marker: false, payloadType: 8, sequence: 1001, timestamp: 5160, ssrc: 0xdeadbeef });
    expect(second.payload.length).toBe(160);
  });

  it('advances the sequence by 1 and the timestamp by 160 per 20 ms packet, wrapping', () => {
    const p = new RtpPacketizer({ payloadType: 0, ssrc: 1, sequence: 65534, timestamp: 2 ** 32 - 160 });
    const seqs: number[] = [];
    const tss: number[] = [];
    for (let i = 0; i < 4; i++) {
      const h = parseRtp(p.packet(new Uint8Array(160)))!;
      seqs.push(h.sequence);
      tss.push(h.timestamp);
      expect(h.marker).toBe(i === 0);
    }
    expect(seqs).toEqual([65534, 65535, 0, 1]);
    expect(tss).toEqual([2 ** 32 - 160, 0, 160, 320]);
  });
});
