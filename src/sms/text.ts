import {
  decodeGsm7,
  describeCharacter,
  firstNonGsm7,
  gsm7Septets,
  packSeptets,
  SmsTextError,
  unpackSeptets,
} from './gsm7.js';
import type { EncodedText } from './types.js';

export { SmsTextError, type SmsTextErrorDetail } from './gsm7.js';

/** One SMS part without a UDH: 140 octets = 160 septets or 70 UCS-2 code units (TS 23.040 §9.2.3.24, TS 23.038 §6.1.2). */
export const GSM7_PART_SEPTETS = 160;
export const UCS2_PART_UNITS = 70;

/** The placeholder every template must contain. */
export const CODE_PLACEHOLDER = '{code}';

/** Longest code sent by SMS (src/verification: code_length 4..6); a template must fit one part with it. */
const LONGEST_CODE = '000000';

/** SMPP 3.4 §5.2.19 data_coding values used here. */
export const DataCoding = {
  /** SMSC default alphabet: GSM-7 for every SMSC we know. */
  SMSC_DEFAULT: 0x00,
  IA5: 0x01,
  LATIN1: 0x03,
  UCS2: 0x08,
} as const;

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
/** Characters sent unchanged under data_coding 1 (IA5 / ASCII), and all in GSM-7 too ('`' is not, and never gets here). */
const IA5_SAFE = /^[\x20-\x7E\r\n]*$/;

/**
 * The message for `code`: `{code}` replaced, GSM-7 when every character is in
 * the GSM 03.38 alphabet, else UCS-2, and checked to fit one part (GSM-7: 160
 * septets, an extension character counting 2; UCS-2: 70 UTF-16 code units, a
 * surrogate pair counting 2). Throws SmsTextError otherwise.
 */
export function renderSms(template: string, code: string): EncodedText {
  if (!template.includes(CODE_PLACEHOLDER)) {
    throw new SmsTextError(`the SMS template does not contain ${CODE_PLACEHOLDER}`);
  }
  const text = template.split(CODE_PLACEHOLDER).join(code);
  const lone = LONE_SURROGATE.exec(text);
  if (lone) {
    throw new SmsTextError(`the SMS text has a broken UTF-16 surrogate at index ${lone.index}`, { position: lone.index });
  }
  const nonGsm = firstNonGsm7(text);
  if (!nonGsm) {
    const length = gsm7Septets(text).length;
    if (length > GSM7_PART_SEPTETS) {
      throw new SmsTextError(
        `the SMS text is ${length} GSM-7 septets; one part holds at most ${GSM7_PART_SEPTETS}`,
        { length, limit: GSM7_PART_SEPTETS, encoding: 'gsm7' },
      );
    }
    return { encoding: 'gsm7', text };
  }
  if (text.length > UCS2_PART_UNITS) {
    throw new SmsTextError(
      `the SMS text is ${text.length} UCS-2 characters (UCS-2 because of ${describeCharacter(nonGsm.character)} at index ${nonGsm.position}); ` +
        `one part holds at most ${UCS2_PART_UNITS}`,
      { length: text.length, limit: UCS2_PART_UNITS, encoding: 'ucs2', ...nonGsm },
    );
  }
  return { encoding: 'ucs2', text };
}

/** Checks a template before it is stored: it contains {code} and, with a 6-digit code, fits one part. Throws SmsTextError. */
export function validateTemplate(template: string): void {
  renderSms(template, LONGEST_CODE);
}

/**
 * data_coding and short_message octets for one SMSC:
 * - gsm7, `gsm7DataCoding` 0: GSM-7 septets, one per octet, or packed when
 *   `gsm7Packed` (with <CR> padding when 7 bits would be left over, TS 23.038
 *   §6.1.2.3.1, so the handset does not show a trailing '@');
 * - gsm7, `gsm7DataCoding` 1 (IA5): the ASCII bytes, only when every character
 *   is printable ASCII (or CR/LF); otherwise data_coding 0 as above, because
 *   '€', 'é', '£'... have no IA5 byte;
 * - ucs2: data_coding 8, UTF-16BE.
 * The one-part limits are checked again; throws SmsTextError.
 */
export function encodeShortMessage(
  message: EncodedText,
  smsc: { gsm7DataCoding: 0 | 1; gsm7Packed: boolean },
): { dataCoding: number; shortMessage: Buffer } {
  if (message.encoding === 'ucs2') {
    if (LONE_SURROGATE.test(message.text)) throw new SmsTextError('the SMS text has a broken UTF-16 surrogate');
    if (message.text.length > UCS2_PART_UNITS) {
      throw new SmsTextError(`the SMS text is ${message.text.length} UCS-2 characters; one part holds at most ${UCS2_PART_UNITS}`, {
        length: message.text.length,
        limit: UCS2_PART_UNITS,
        encoding: 'ucs2',
      });
    }
    return { dataCoding: DataCoding.UCS2, shortMessage: Buffer.from(message.text, 'utf16le').swap16() };
  }
  const septets = gsm7Septets(message.text);
  if (septets.length > GSM7_PART_SEPTETS) {
    throw new SmsTextError(`the SMS text is ${septets.length} GSM-7 septets; one part holds at most ${GSM7_PART_SEPTETS}`, {
      length: septets.length,
      limit: GSM7_PART_SEPTETS,
      encoding: 'gsm7',
    });
  }
  if (smsc.gsm7DataCoding === DataCoding.IA5 && IA5_SAFE.test(message.text)) {
    return { dataCoding: DataCoding.IA5, shortMessage: Buffer.from(message.text, 'latin1') };
  }
  if (!smsc.gsm7Packed) return { dataCoding: DataCoding.SMSC_DEFAULT, shortMessage: Buffer.from(septets) };
  if (septets.length % 8 === 7) septets.push(0x0d);
  return { dataCoding: DataCoding.SMSC_DEFAULT, shortMessage: packSeptets(septets) };
}

/**
 * Text of a short_message (or message_payload) for its data_coding:
 * 0 and 0xF0-0xF3 (GSM message class, 7-bit) → GSM-7 septets, one per octet,
 * or packed when `packed`; 1 → ASCII; 3 → Latin-1; 8 → UTF-16BE; anything
 * else (binary, national tables) → Latin-1, so the bytes stay visible.
 * Receipts are not decoded here: their text is ASCII whatever data_coding
 * says (see src/sms/receipt.ts).
 */
export function decodeShortMessage(dataCoding: number, buf: Buffer, packed = false): string {
  if (dataCoding === DataCoding.SMSC_DEFAULT || (dataCoding & 0xfc) === 0xf0) {
    if (!packed) return decodeGsm7([...buf]);
    const count = Math.floor((buf.length * 8) / 7);
    const septets = unpackSeptets(buf, count);
    // A <CR> filling the last 7 bits of an octet boundary is padding (TS 23.038 §6.1.2.3.1).
    if (count % 8 === 0 && septets[count - 1] === 0x0d) septets.pop();
    return decodeGsm7(septets);
  }
  if (dataCoding === DataCoding.IA5) return buf.toString('ascii');
  if (dataCoding === DataCoding.UCS2) {
    const even = Buffer.from(buf.subarray(0, buf.length - (buf.length % 2)));
    return even.swap16().toString('utf16le');
  }
  return buf.toString('latin1');
}
