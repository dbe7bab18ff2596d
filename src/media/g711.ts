/**
 * G.711 (ITU-T G.711, 1988) μ-law and A-law, table-driven.
 *
 * Encoding tables cover every 16-bit linear sample (64 KiB each, built once at
 * load); decoding tables cover every 8-bit code. The arithmetic that fills them
 * is the classic reference (Sun Microsystems' g711.c, public domain): μ-law on
 * 14-bit magnitudes with a bias of 0x84 and the code inverted; A-law on 13-bit
 * magnitudes with even bits inverted (XOR 0x55).
 */

export type G711Codec = 'PCMU' | 'PCMA';

const ULAW_BIAS = 0x84;
const ULAW_CLIP = 32635;

function segmentOf(value: number, ends: readonly number[]): number {
  for (let i = 0; i < ends.length; i++) if (value <= ends[i]!) return i;
  return ends.length;
}

const SEG_END_ULAW = [0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff, 0x3fff, 0x7fff];
const SEG_END_ALAW = [0x1f, 0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff];

function linearToUlaw(sample: number): number {
  let pcm = sample;
  let mask: number;
  if (pcm < 0) {
    pcm = -pcm;
    mask = 0x7f;
  } else {
    mask = 0xff;
  }
  if (pcm > ULAW_CLIP) pcm = ULAW_CLIP;
  pcm += ULAW_BIAS;
  const seg = segmentOf(pcm, SEG_END_ULAW);
  if (seg >= 8) return 0x7f ^ mask;
  return ((seg << 4) | ((pcm >> (seg + 3)) & 0x0f)) ^ mask;
}

function ulawToLinear(code: number): number {
  const u = ~code & 0xff;
  let t = ((u & 0x0f) << 3) + ULAW_BIAS;
  t <<= (u & 0x70) >> 4;
  return u & 0x80 ? ULAW_BIAS - t : t - ULAW_BIAS;
}

function linearToAlaw(sample: number): number {
  let pcm = sample >> 3; // 13-bit
  let mask: number;
  if (pcm >= 0) {
    mask = 0xd5; // sign bit set, even bits inverted
  } else {
    mask = 0x55;
    pcm = -pcm - 1;
  }
  const seg = segmentOf(pcm, SEG_END_ALAW);
  if (seg >= 8) return 0x7f ^ mask;
  let aval = seg << 4;
  aval |= seg < 2 ? (pcm >> 1) & 0x0f : (pcm >> seg) & 0x0f;
  return aval ^ mask;
}

function alawToLinear(code: number): number {
  const a = code ^ 0x55;
  let t = (a & 0x0f) << 4;
  const seg = (a & 0x70) >> 4;
  if (seg === 0) t += 8;
  else if (seg === 1) t += 0x108;
  else t = (t + 0x108) << (seg - 1);
  return a & 0x80 ? t : -t;
}

function buildEncodeTable(encode: (s: number) => number): Uint8Array {
  const table = new Uint8Array(65536);
  for (let i = 0; i < 65536; i++) table[i] = encode(i < 32768 ? i : i - 65536);
  return table;
}

function buildDecodeTable(decode: (c: number) => number): Int16Array {
  const table = new Int16Array(256);
  for (let c = 0; c < 256; c++) table[c] = decode(c);
  return table;
}

const ENCODE: Record<G711Codec, Uint8Array> = {
  PCMU: buildEncodeTable(linearToUlaw),
  PCMA: buildEncodeTable(linearToAlaw),
};
const DECODE: Record<G711Codec, Int16Array> = {
  PCMU: buildDecodeTable(ulawToLinear),
  PCMA: buildDecodeTable(alawToLinear),
};

/** RTP/AVP static payload types (RFC 3551 table 4). */
export const G711_PAYLOAD_TYPE: Record<G711Codec, number> = { PCMU: 0, PCMA: 8 };

/** Encodes one 16-bit linear sample. */
export function encodeSample(codec: G711Codec, sample: number): number {
  return ENCODE[codec][sample & 0xffff]!;
}

/** Decodes one G.711 code to a 16-bit linear sample. */
export function decodeSample(codec: G711Codec, code: number): number {
  return DECODE[codec][code & 0xff]!;
}

/** Encodes 16-bit linear PCM; `out` (same length) may be reused between calls. */
export function encode(codec: G711Codec, pcm: Int16Array, out: Uint8Array = new Uint8Array(pcm.length)): Uint8Array {
  const table = ENCODE[codec];
  for (let i = 0; i < pcm.length; i++) out[i] = table[pcm[i]! & 0xffff]!;
  return out;
}

/** Decodes G.711 to 16-bit linear PCM. */
export function decode(codec: G711Codec, data: Uint8Array): Int16Array {
  const table = DECODE[codec];
  const out = new Int16Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = table[data[i]!]!;
  return out;
}

/** The code for digital silence (linear 0): 0xFF in μ-law, 0xD5 in A-law. */
export function silenceCode(codec: G711Codec): number {
  return encodeSample(codec, 0);
}
