/**
 * A test RTP receiver: one UDP socket on 127.0.0.1 collecting every packet
 * (with its arrival time), plus helpers to decode the audio and to find
 * which prompts were played in it.
 */
import { createSocket, type Socket } from 'node:dgram';
import { decode, encode, type G711Codec } from '../../src/media/g711.js';
import { parseRtp, type RtpHeader } from '../../src/media/rtp/rtp-packetizer.js';

export interface ReceivedPacket extends RtpHeader {
  /** performance.now() at arrival. */
  at: number;
}

export interface RtpReceiver {
  readonly port: number;
  readonly packets: ReceivedPacket[];
  close(): Promise<void>;
}

export async function startRtpReceiver(): Promise<RtpReceiver> {
  const socket: Socket = createSocket('udp4');
  const packets: ReceivedPacket[] = [];
  socket.on('message', (msg) => {
    const h = parseRtp(Buffer.from(msg));
    if (h) packets.push({ ...h, at: performance.now() });
  });
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  return {
    port: socket.address().port,
    packets,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}

/** The decoded audio of a stream, packets in sequence order. */
export function decodeStream(codec: G711Codec, packets: readonly ReceivedPacket[]): Int16Array {
  // In sequence order from the stream's first packet, across the 16-bit wrap (the first sequence number is
  // random: a plain numeric sort put the packets after 65535 → 0 first, about once in a thousand runs).
  const first = packets.reduce<ReceivedPacket | undefined>((f, p) => (f === undefined || p.at < f.at ? p : f), undefined);
  const from = first?.sequence ?? 0;
  const sorted = [...packets].sort((a, b) => ((a.sequence - from) & 0xffff) - ((b.sequence - from) & 0xffff));
  return decode(codec, Buffer.concat(sorted.map((p) => p.payload)));
}

/** What a prompt sounds like after the codec: decode(encode(pcm)). The sender is deterministic, so this matches exactly. */
export function throughCodec(codec: G711Codec, pcm: Int16Array): Int16Array {
  return decode(codec, encode(codec, pcm));
}

/** Every offset at which `needle` occurs exactly in `hay`. */
export function findAll(hay: Int16Array, needle: Int16Array): number[] {
  const out: number[] = [];
  if (needle.length === 0) return out;
  // Anchor on the loudest sample of the needle to skip silence quickly.
  let anchor = 0;
  for (let i = 1; i < needle.length; i++) if (Math.abs(needle[i]!) > Math.abs(needle[anchor]!)) anchor = i;
  const a = needle[anchor]!;
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    if (hay[i + anchor] !== a) continue;
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    out.push(i);
  }
  return out;
}
