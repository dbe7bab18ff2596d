import { describe, expect, it } from 'vitest';
import { decode } from '../../../src/media/g711.js';
import { decodeStream, type ReceivedPacket } from '../../helpers/rtp-receiver.js';

/**
 * The tests' RTP receiver puts a stream back in order across the 16-bit
 * sequence wrap: the player starts at a random sequence number, and a plain
 * numeric sort made the audio checks of the voice tests fail about once in a
 * thousand runs (a stream that crossed 65535 → 0 came out with its end first).
 */
describe('decodeStream', () => {
  const packet = (sequence: number, at: number, byte: number): ReceivedPacket => ({
    version: 2,
    marker: at === 0,
    payloadType: 8,
    sequence,
    timestamp: 160 * at,
    ssrc: 1,
    payload: Buffer.alloc(160, byte),
    at,
  });

  it('orders a stream that crosses the wrap from its first packet', () => {
    // Arrived out of order on purpose; sequences 65534, 65535, 0, 1.
    const packets = [packet(0, 2, 0x33), packet(65534, 0, 0x11), packet(1, 3, 0x44), packet(65535, 1, 0x22)];
    const audio = decodeStream('PCMA', packets);
    const firstOf = (i: number) => audio[i * 160];
    expect([0, 1, 2, 3].map(firstOf)).toEqual([0x11, 0x22, 0x33, 0x44].map((b) => decode('PCMA', Buffer.from([b]))[0]));
  });
});
