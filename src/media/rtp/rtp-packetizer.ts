/**
 * RTP packets of one outgoing stream (RFC 3550 5.1): version 2, no padding,
 * no extension, no CSRC; the sequence number and timestamp start at random
 * values (RFC 3550 5.1) and wrap modulo 2^16 / 2^32; the marker bit is set on
 * the first packet of a talkspurt (RFC 3551 4.1), here the first of the stream.
 */
export const RTP_HEADER_BYTES = 12;

export interface PacketizerOptions {
  payloadType: number;
  ssrc: number;
  /** Initial sequence number (0..65535). */
  sequence: number;
  /** Initial timestamp (0..2^32-1). */
  timestamp: number;
}

export class RtpPacketizer {
  private seq: number;
  private ts: number;
  private first = true;

  constructor(private readonly opts: PacketizerOptions) {
    this.seq = opts.sequence & 0xffff;
    this.ts = opts.timestamp >>> 0;
  }

  get ssrc(): number {
    return this.opts.ssrc >>> 0;
  }

  /** Sequence number the next packet will carry. */
  get nextSequence(): number {
    return this.seq;
  }

  /** Timestamp the next packet will carry. */
  get nextTimestamp(): number {
    return this.ts;
  }

  /**
   * Builds the next packet around `payload` (copied) and advances the sequence
   * number by one and the timestamp by `samples` (the payload's duration in
   * clock ticks: 160 for 20 ms of 8 kHz G.711).
   */
  packet(payload: Uint8Array, samples: number = payload.length): Buffer {
    const buf = Buffer.allocUnsafe(RTP_HEADER_BYTES + payload.length);
    buf[0] = 0x80; // V=2, P=0, X=0, CC=0
    buf[1] = (this.first ? 0x80 : 0) | (this.opts.payloadType & 0x7f);
    buf.writeUInt16BE(this.seq, 2);
    buf.writeUInt32BE(this.ts, 4);
    buf.writeUInt32BE(this.ssrc, 8);
    buf.set(payload, RTP_HEADER_BYTES);
    this.first = false;
    this.seq = (this.seq + 1) & 0xffff;
    this.ts = (this.ts + samples) >>> 0;
    return buf;
  }
}

export interface RtpHeader {
  version: number;
  marker: boolean;
  payloadType: number;
  sequence: number;
  timestamp: number;
  ssrc: number;
  payload: Buffer;
}

/** Parses a packet without CSRCs/extension handling beyond skipping them (receivers, tests). */
export function parseRtp(buf: Buffer): RtpHeader | undefined {
  if (buf.length < RTP_HEADER_BYTES) return undefined;
  const b0 = buf[0]!;
  const b1 = buf[1]!;
  let offset = RTP_HEADER_BYTES + (b0 & 0x0f) * 4;
  if (b0 & 0x10) {
    if (buf.length < offset + 4) return undefined;
    offset += 4 + buf.readUInt16BE(offset + 2) * 4;
  }
  let end = buf.length;
  if (b0 & 0x20) end -= buf[buf.length - 1]!;
  if (offset > end) return undefined;
  return {
    version: b0 >> 6,
    marker: (b1 & 0x80) !== 0,
    payloadType: b1 & 0x7f,
    sequence: buf.readUInt16BE(2),
    timestamp: buf.readUInt32BE(4),
    ssrc: buf.readUInt32BE(8),
    payload: buf.subarray(offset, end),
  };
}
