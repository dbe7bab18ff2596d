/** Seeded randomness and message mutations shared by the SIP fuzz tests (parser and UAC over UDP). */

/** mulberry32: a small seeded PRNG, so a failing fuzz run is reproducible. */
export function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}


export const NASTY = ['\r', '\n', '\r\n', '\0', ' ', '\t', ':', ';', ',', '"', '\\', '<', '>', '=', '%', '99999999999999999999', '-1', '\u00ff', '\ud83d\ude00'];

/** 1 to 6 random edits: byte flips, truncation, nasty tokens, deletions, duplicated spans, huge lines, line-end swaps. */
export function mutate(input: Buffer, rnd: () => number): Buffer {
  let b = Buffer.from(input);
  const ops = 1 + Math.floor(rnd() * 6);
  for (let k = 0; k < ops; k++) {
    const at = Math.floor(rnd() * (b.length + 1));
    switch (Math.floor(rnd() * 7)) {
      case 0: // flip a byte
        if (b.length) b[Math.min(at, b.length - 1)] = Math.floor(rnd() * 256);
        break;
      case 1: // truncate
        b = b.subarray(0, at);
        break;
      case 2: // insert a nasty token
        b = Buffer.concat([b.subarray(0, at), Buffer.from(NASTY[Math.floor(rnd() * NASTY.length)]!), b.subarray(at)]);
        break;
      case 3: // delete a span
        b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + Math.floor(rnd() * 40)))]);
        break;
      case 4: // duplicate a span (repeated headers, doubled separators)
        {
          const span = b.subarray(at, Math.min(b.length, at + Math.floor(rnd() * 80)));
          b = Buffer.concat([b.subarray(0, at), span, span, b.subarray(at)]);
        }
        break;
      case 5: // a huge line
        b = Buffer.concat([b.subarray(0, at), Buffer.alloc(Math.floor(rnd() * 20_000), 'A'), b.subarray(at)]);
        break;
      default: // swap CRLF for LF or CR
        b = Buffer.from(b.toString('latin1').replace(/\r\n/g, rnd() < 0.5 ? '\n' : '\r'), 'latin1');
    }
  }
  return b;
}

