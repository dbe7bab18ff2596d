import { describe, expect, it } from 'vitest';
import { decode, decodeSample, encode, encodeSample, silenceCode } from '../../../src/media/g711.js';

describe('G.711 μ-law (PCMU)', () => {
  it('encodes the reference values of ITU-T G.711 / Sun g711.c', () => {
    expect(encodeSample('PCMU', 0)).toBe(0xff);
    expect(encodeSample('PCMU', -1)).toBe(0x7f);
    expect(encodeSample('PCMU', 32767)).toBe(0x80);
    expect(encodeSample('PCMU', -32768)).toBe(0x00);
    expect(encodeSample('PCMU', 1000)).toBe(0xce);
    expect(encodeSample('PCMU', -1000)).toBe(0x4e);
    expect(silenceCode('PCMU')).toBe(0xff);
  });

  it('decodes to the segment mid-points', () => {
    expect(decodeSample('PCMU', 0xff)).toBe(0);
    expect(decodeSample('PCMU', 0x7f)).toBe(0);
    expect(decodeSample('PCMU', 0x80)).toBe(32124);
    expect(decodeSample('PCMU', 0x00)).toBe(-32124);
    expect(decodeSample('PCMU', 0xce)).toBe(988);
  });

  it('re-encodes every decoded value to the same code (except the two zeros)', () => {
    for (let c = 0; c < 256; c++) {
      const back = encodeSample('PCMU', decodeSample('PCMU', c));
      expect(c === 0x7f ? 0xff : c).toBe(back);
    }
  });
});

describe('G.711 A-law (PCMA)', () => {
  it('encodes the reference values', () => {
    expect(encodeSample('PCMA', 0)).toBe(0xd5);
    expect(encodeSample('PCMA', -1)).toBe(0x55);
    expect(encodeSample('PCMA', 32767)).toBe(0xaa);
    expect(encodeSample('PCMA', -32768)).toBe(0x2a);
    expect(encodeSample('PCMA', 1000)).toBe(0xfa);
    expect(encodeSample('PCMA', -1000)).toBe(0x7a);
    expect(silenceCode('PCMA')).toBe(0xd5);
  });

  it('decodes to the segment mid-points', () => {
    expect(decodeSample('PCMA', 0xd5)).toBe(8);
    expect(decodeSample('PCMA', 0x55)).toBe(-8);
    expect(decodeSample('PCMA', 0xaa)).toBe(32256);
    expect(decodeSample('PCMA', 0x2a)).toBe(-32256);
    expect(decodeSample('PCMA', 0xfa)).toBe(1008);
  });

  it('re-encodes every decoded value to the same code', () => {
    for (let c = 0; c < 256; c++) expect(encodeSample('PCMA', decodeSample('PCMA', c))).toBe(c);
  });
});

describe('buffer encode/decode', () => {
  it.each(['PCMU', 'PCMA'] as const)('%s: decode(encode(x)) stays within the quantisation step', (codec) => {
    const pcm = new Int16Array(2000).map((_, i) => Math.round(12000 * Math.sin(i / 7)));
    const out = decode(codec, encode(codec, pcm));
    for (let i = 0; i < pcm.length; i++) {
      const x = pcm[i]!;
      expect(Math.abs(out[i]! - x)).toBeLessThanOrEqual(Math.max(16, Math.abs(x) / 16));
    }
  });
});
