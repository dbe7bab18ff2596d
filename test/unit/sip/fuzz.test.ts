import { describe, expect, it } from 'vitest';
import { parseMessage, StreamFramer } from '../../../src/sip/parser.js';
import { allTorture } from '../../helpers/rfc4475.js';
import { mutate, prng } from '../../helpers/sip-fuzz.js';

/**
 * Fuzzing the SIP parser with random and mutated messages: it must never
 * throw (parseMessage catches, so a reason "parser exception" would betray a
 * bug), never take long on one message, and the stream framer must not buffer
 * without bound. Seeded, so a failure is reproducible.
 */
/** All 49 torture messages (valid, invalid and application-layer) seed the mutations. */
const SEEDS: Buffer[] = allTorture().map((t) => t.data);
const RESPONSE = Buffer.from(
  [
    'SIP/2.0 180 Ringing',
    'Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK776asdhds;rport=5070',
    'From: <sip:+441908730001234@127.0.0.1;user=phone>;tag=1928301774',
    'To: <sip:+447700900000@127.0.0.1;user=phone>;tag=a6c85cf',
    'Call-ID: a84b4c76e66710@127.0.0.1',
    'CSeq: 314159 INVITE',
    'Contact: <sip:127.0.0.1:5060>',
    'Content-Length: 0',
    '',
    '',
  ].join('\r\n'),
);
describe('SIP parser fuzz', () => {
  it('mutated RFC 4475 messages and responses: no throw, no internal exception, no hang', () => {
    const rnd = prng(4475);
    let slowest = 0;
    let parsed = 0;
    for (let i = 0; i < 20_000; i++) {
      const base = i % 3 === 0 ? RESPONSE : SEEDS[Math.floor(rnd() * SEEDS.length)]!;
      const input = mutate(base, rnd);
      const t0 = performance.now();
      for (const datagram of [true, false]) {
        const r = parseMessage(input, { datagram });
        if (!r.ok) expect(r.reason, input.toString('latin1').slice(0, 200)).not.toMatch(/parser exception/);
        else parsed++;
      }
      slowest = Math.max(slowest, performance.now() - t0);
    }
    // Some mutations stay valid (the fuzzer is not just producing garbage). No input hangs the parser:
    // the bound is loose on purpose (a loaded CI machine pauses for GC); a hang or a blow-up is seconds.
    expect(parsed).toBeGreaterThan(1000);
    expect(slowest).toBeLessThan(2000);
  });

  it('random bytes: rejected, never thrown', () => {
    const rnd = prng(1);
    for (let i = 0; i < 5000; i++) {
      const b = Buffer.alloc(Math.floor(rnd() * 2000));
      for (let j = 0; j < b.length; j++) b[j] = Math.floor(rnd() * 256);
      const r = parseMessage(b);
      if (!r.ok) expect(r.reason).not.toMatch(/parser exception/);
    }
  });

  it('stream framer: random chunking of mutated streams never throws and never buffers past the head limit', () => {
    const rnd = prng(7);
    for (let i = 0; i < 2000; i++) {
      const framer = new StreamFramer();
      const stream = Buffer.concat([mutate(RESPONSE, rnd), RESPONSE, mutate(SEEDS[i % SEEDS.length]!, rnd)]);
      let pos = 0;
      while (pos < stream.length) {
        const n = 1 + Math.floor(rnd() * 300);
        const r = framer.push(stream.subarray(pos, pos + n));
        pos += n;
        if (r.error) {
          expect(r.error).not.toMatch(/parser exception/);
          break; // the connection would be closed
        }
        expect((framer as unknown as { buffer: Buffer }).buffer.length).toBeLessThan(16 * 1024 + 64 * 1024 + 300);
      }
    }
  });
});
