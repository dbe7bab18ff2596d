import { describe, expect, it } from 'vitest';
import {
  decodeGsm7,
  gsm7Septets,
  isGsm7,
  packSeptets,
  septetLength,
  SmsTextError,
  unpackSeptets,
} from '../../../src/sms/gsm7.js';

/** 3GPP TS 23.038 §6.2.1, one row of 16 per column of the spec's table (0x1B is the escape). */
const BASIC_ROWS = [
  ['@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å'],
  ['Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', null, 'Æ', 'æ', 'ß', 'É'],
  [' ', '!', '"', '#', '¤', '%', '&', "'", '(', ')', '*', '+', ',', '-', '.', '/'],
  ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?'],
  ['¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O'],
  ['P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§'],
  ['¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o'],
  ['p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à'],
] as const;

/** TS 23.038 §6.2.1.1 extension table: character → code after the escape. */
const EXTENSION: Array<[string, number]> = [
  ['\f', 0x0a],
  ['^', 0x14],
  ['{', 0x28],
  ['}', 0x29],
  ['\\', 0x2f],
  ['[', 0x3c],
  ['~', 0x3d],
  [']', 0x3e],
  ['|', 0x40],
  ['€', 0x65],
];

function thrown(fn: () => unknown): SmsTextError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(SmsTextError);
    return err as SmsTextError;
  }
  throw new Error('expected an SmsTextError');
}

const BASIC: Array<[string, number]> = BASIC_ROWS.flatMap((row, r) =>
  row.flatMap((ch, c): Array<[string, number]> => (ch === null ? [] : [[ch, r * 16 + c]])),
);

describe('GSM 03.38 default alphabet', () => {
  it('has 127 characters besides the escape', () => {
    expect(BASIC).toHaveLength(127);
  });

  it.each(BASIC)('encodes %j as the single septet %i and decodes it back', (ch, septet) => {
    expect(isGsm7(ch)).toBe(true);
    expect(gsm7Septets(ch)).toEqual([septet]);
    expect(septetLength(ch)).toBe(1);
    expect(decodeGsm7([septet])).toBe(ch);
  });

  it.each(EXTENSION)('encodes extension character %j as escape + %i (2 septets) and round-trips', (ch, code) => {
    expect(isGsm7(ch)).toBe(true);
    expect(gsm7Septets(ch)).toEqual([0x1b, code]);
    expect(septetLength(ch)).toBe(2);
    expect(decodeGsm7([0x1b, code])).toBe(ch);
    expect(decodeGsm7(unpackSeptets(packSeptets(gsm7Septets(`a${ch}b`)), 4))).toBe(`a${ch}b`);
  });

  it('round-trips the whole alphabet and extension table in one text', () => {
    const all = BASIC.map(([ch]) => ch).join('') + EXTENSION.map(([ch]) => ch).join('');
    const septets = gsm7Septets(all);
    expect(septets).toHaveLength(127 + 2 * 10);
    expect(decodeGsm7(septets)).toBe(all);
    expect(decodeGsm7(unpackSeptets(packSeptets(septets), septets.length))).toBe(all);
  });

  it.each(['`', 'ó', 'ç', 'á', '\x1B', '\t', 'Ж', '😀'])('refuses %j, naming it and its position', (ch) => {
    const text = `code ${ch} here`;
    expect(isGsm7(text)).toBe(false);
    const e = thrown(() => gsm7Septets(text));
    expect(e.code).toBe('sms_text');
    expect(e.detail).toMatchObject({ character: ch, position: 5 });
    expect(e.message).toContain(`'${ch}'`);
    expect(e.message).toContain('index 5');
  });

  it('counts the position in UTF-16 units after a surrogate pair', () => {
    expect(() => gsm7Septets('😀😀')).toThrow(/index 0/);
    const e = thrown(() => gsm7Septets('ab€😀'));
    expect(e.detail).toMatchObject({ character: '😀', position: 3 });
    expect(e.message).toContain('U+1F600');
  });

  it('decodes an escape before an undefined code as the basic character, and a trailing escape as a space', () => {
    expect(decodeGsm7([0x1b, 0x41])).toBe('A');
    expect(decodeGsm7([0x41, 0x1b])).toBe('A ');
    expect(decodeGsm7([0x80])).toBe('\uFFFD');
  });
});

describe('septet packing (TS 23.038 §6.1.2.1.1)', () => {
  it('packs "hellohello" to e8329bfd4697d9ec37', () => {
    const packed = packSeptets(gsm7Septets('hellohello'));
    expect(packed.toString('hex')).toBe('e8329bfd4697d9ec37');
    expect(decodeGsm7(unpackSeptets(packed, 10))).toBe('hellohello');
  });

  it('packs "Hello" to C8329BFD06 and 8 septets into 7 octets', () => {
    expect(packSeptets(gsm7Septets('Hello')).toString('hex').toUpperCase()).toBe('C8329BFD06');
    expect(packSeptets(gsm7Septets('12345678'))).toHaveLength(7);
    expect(packSeptets([])).toHaveLength(0);
  });

  it('packs 160 septets into 140 octets', () => {
    const septets = gsm7Septets('x'.repeat(160));
    const packed = packSeptets(septets);
    expect(packed).toHaveLength(140);
    expect(unpackSeptets(packed, 160)).toEqual(septets);
  });

  it('refuses to unpack more septets than the octets hold', () => {
    expect(() => unpackSeptets(Buffer.alloc(7), 9)).toThrow(RangeError);
    expect(unpackSeptets(Buffer.alloc(7), 8)).toHaveLength(8);
  });
});
