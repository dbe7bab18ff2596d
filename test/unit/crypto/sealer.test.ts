import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Sealer } from '../../../src/crypto/sealer.js';

describe('Sealer', () => {
  const key = randomBytes(32);

  it('round-trips and never shows the plaintext', () => {
    const s = new Sealer(key);
    const sealed = s.seal('+447700900000', 'phone:abc');
    expect(sealed).not.toContain('447700900000');
    expect(s.open(sealed, 'phone:abc')).toBe('+447700900000');
    expect(s.seal('1234')).not.toBe(s.seal('1234')); // random IV
  });

  it('never repeats an IV across pool refills, and every sealed value still opens (IVs come from a pool)', () => {
    const s = new Sealer(key);
    const sealed = Array.from({ length: 2000 }, (_, i) => s.seal(`v${i}`, `aad:${i}`));
    const ivs = sealed.map((x) => x.split('.')[2]!);
    expect(new Set(ivs).size).toBe(2000);
    for (const iv of ivs) expect(Buffer.from(iv, 'base64url')).toHaveLength(12);
    // Every value sealed across the refills opens.
    sealed.forEach((x, i) => expect(s.open(x, `aad:${i}`)).toBe(`v${i}`));
  });

  it('refuses tampered values and values bound to another record', () => {
    const s = new Sealer(key);
    const sealed = s.seal('1234', 'code:a');
    expect(() => s.open(sealed, 'code:b')).toThrow();
    const parts = sealed.split('.');
    parts[4] = Buffer.from('9999').toString('base64url');
    expect(() => s.open(parts.join('.'), 'code:a')).toThrow();
  });

  it('opens values sealed with a previous key after rotation', () => {
    const old = new Sealer(key);
    const sealed = old.seal('secret');
    const rotated = new Sealer(randomBytes(32), [key]);
    expect(rotated.open(sealed)).toBe('secret');
    expect(() => new Sealer(randomBytes(32)).open(sealed)).toThrow(/unknown key/);
  });

  it('MACs are domain-separated and compared in constant time', () => {
    const s = new Sealer(key);
    expect(s.mac('code', 'x')).not.toBe(s.mac('phone', 'x'));
    expect(Sealer.equal(s.mac('code', 'x'), s.mac('code', 'x'))).toBe(true);
    expect(Sealer.equal(s.mac('code', 'x'), s.mac('code', 'y'))).toBe(false);
    expect(Sealer.equal('abc', 'abcd')).toBe(false);
  });
});
