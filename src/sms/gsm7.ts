import { AppError } from '../errors/app-error.js';

/**
 * GSM 03.38 (3GPP TS 23.038 §6.2.1) default 7-bit alphabet and its extension
 * table (§6.2.1.1), with septet packing (§6.1.2.1.1). Only the default
 * alphabet: national language shift tables are not used, so a character
 * outside it means UCS-2, never a silent substitute.
 */

/** Details of an `SmsTextError`, for logs and API messages. */
export interface SmsTextErrorDetail {
  /** The first character that cannot be encoded, and its UTF-16 index in the text. */
  character?: string;
  position?: number;
  /** Length in the unit of `encoding` (septets or UTF-16 code units), and the one-part limit. */
  length?: number;
  limit?: number;
  encoding?: 'gsm7' | 'ucs2';
}

/**
 * Text that cannot be sent as one SMS: a character outside the alphabet
 * asked for, or too long for one part. Defined here (the lowest layer that
 * throws it) and re-exported by src/sms/text.ts, so neither module imports
 * the other.
 */
export class SmsTextError extends AppError {
  constructor(
    message: string,
    readonly detail: SmsTextErrorDetail = {},
  ) {
    super('sms_text', message);
  }
}

/** Septet 0x1B: the next septet is read from the extension table. */
export const GSM7_ESCAPE = 0x1b;

/** The default alphabet, indexed by septet value (0x1B is the escape, never a character). */
const BASIC =
  '@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1BÆæßÉ' +
  ' !"#¤%&\'()*+,-./0123456789:;<=>?' +
  '¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§' +
  '¿abcdefghijklmnopqrstuvwxyzäöñüà';

/** Extension table (after an escape): septet value → character. */
const EXTENSION: ReadonlyArray<readonly [number, string]> = [
  [0x0a, '\f'],
  [0x14, '^'],
  [0x28, '{'],
  [0x29, '}'],
  [0x2f, '\\'],
  [0x3c, '['],
  [0x3d, '~'],
  [0x3e, ']'],
  [0x40, '|'],
  [0x65, '€'],
];

const basicByChar = new Map<string, number>();
for (let i = 0; i < BASIC.length; i++) {
  if (i !== GSM7_ESCAPE) basicByChar.set(BASIC.charAt(i), i);
}
const extensionByChar = new Map<string, number>(EXTENSION.map(([septet, ch]) => [ch, septet]));
const extensionBySeptet = new Map<number, string>(EXTENSION);

/** True when every character is in the default alphabet or its extension table. */
export function isGsm7(text: string): boolean {
  for (const ch of text) {
    if (!basicByChar.has(ch) && !extensionByChar.has(ch)) return false;
  }
  return true;
}

/** The first character outside GSM-7, with its UTF-16 index, or undefined. */
export function firstNonGsm7(text: string): { character: string; position: number } | undefined {
  let position = 0;
  for (const ch of text) {
    if (!basicByChar.has(ch) && !extensionByChar.has(ch)) return { character: ch, position };
    position += ch.length;
  }
  return undefined;
}

/** "'ó' (U+00F3)" */
export function describeCharacter(ch: string): string {
  const cp = ch.codePointAt(0) ?? 0;
  return `'${ch}' (U+${cp.toString(16).toUpperCase().padStart(4, '0')})`;
}

/**
 * Septet values for `text`; an extension character takes two (escape + code).
 * Throws SmsTextError naming the first character that is not in the alphabet.
 */
export function gsm7Septets(text: string): number[] {
  const septets: number[] = [];
  let position = 0;
  for (const ch of text) {
    const basic = basicByChar.get(ch);
    if (basic !== undefined) septets.push(basic);
    else {
      const ext = extensionByChar.get(ch);
      if (ext === undefined) {
        throw new SmsTextError(`${describeCharacter(ch)} at index ${position} is not in the GSM 03.38 alphabet`, {
          character: ch,
          position,
          encoding: 'gsm7',
        });
      }
      septets.push(GSM7_ESCAPE, ext);
    }
    position += ch.length;
  }
  return septets;
}

/** Length of `text` in septets (extension characters count 2); throws like gsm7Septets. */
export function septetLength(text: string): number {
  return gsm7Septets(text).length;
}

/**
 * Packs septets 8 to 7 octets, least significant bits first (TS 23.038
 * §6.1.2.1.1): "hellohello" → e8 32 9b fd 46 97 d9 ec 37. Pads nothing; see
 * encodeShortMessage for the <CR> padding rule.
 */
export function packSeptets(septets: number[]): Buffer {
  const out = Buffer.alloc(Math.ceil((septets.length * 7) / 8));
  septets.forEach((value, i) => {
    const s = value & 0x7f;
    const bit = i * 7;
    const byte = bit >> 3;
    const shift = bit & 7;
    out[byte] = (out[byte] ?? 0) | ((s << shift) & 0xff);
    if (shift > 1) out[byte + 1] = (out[byte + 1] ?? 0) | (s >> (8 - shift));
  });
  return out;
}

/** The first `count` septets packed in `buf`; throws RangeError when `buf` holds fewer. */
export function unpackSeptets(buf: Buffer, count: number): number[] {
  if (!Number.isInteger(count) || count < 0 || count > Math.floor((buf.length * 8) / 7)) {
    throw new RangeError(`${buf.length} octets cannot hold ${count} packed septets`);
  }
  const septets: number[] = [];
  for (let i = 0; i < count; i++) {
    const bit = i * 7;
    const byte = bit >> 3;
    const shift = bit & 7;
    let value = (buf[byte] ?? 0) >> shift;
    if (shift > 1) value |= (buf[byte + 1] ?? 0) << (8 - shift);
    septets.push(value & 0x7f);
  }
  return septets;
}

/**
 * Text for septet values. An escape followed by a code the extension table
 * does not define shows the default-alphabet character for that code, and an
 * escape with nothing after it shows a space (TS 23.038 §6.2.1.1). Values
 * above 0x7F (not septets) become U+FFFD.
 */
export function decodeGsm7(septets: number[]): string {
  let text = '';
  for (let i = 0; i < septets.length; i++) {
    const s = septets[i] ?? 0;
    if (s === GSM7_ESCAPE) {
      const next = septets[i + 1];
      if (next === undefined) {
        text += ' ';
        continue;
      }
      i++;
      text += extensionBySeptet.get(next) ?? basicChar(next);
      continue;
    }
    text += basicChar(s);
  }
  return text;
}

function basicChar(septet: number): string {
  if (septet === GSM7_ESCAPE) return ' ';
  return septet >= 0 && septet < BASIC.length ? BASIC.charAt(septet) : '\uFFFD';
}
