import { parsePhoneNumberFromString, PhoneNumber, type E164Number } from 'libphonenumber-js/max';
import metadata from 'libphonenumber-js/metadata.min.json';
import { NO_COUNTRY, type LineType } from '../config/schema.js';
import { ApiError } from './errors.js';

export interface Destination {
  /** E.164, as received after validation. */
  e164: string;
  /** ISO 3166-1 alpha-2, or "ZZ" when the number's country cannot be told. */
  country: string;
  /**
   * The number's libphonenumber-js type (max metadata), worked out when first asked, from the same parse: the
   * fraud screen asks it of every request, and a second parse of the number cost as much again (about 20 µs).
   */
  lineType?: () => LineType | undefined;
}

const E164 = /^\+[1-9]\d{6,14}$/;

/** Validates an E.164 number (400 invalid_phone otherwise) and finds its country. */
export function parseDestination(input: unknown): Destination {
  if (typeof input !== 'string' || !E164.test(input)) {
    throw new ApiError(
      'invalid_phone',
      'phone_number must be in E.164 format: a "+" then 7 to 15 digits, e.g. +447700900000',
    );
  }
  let parsed = parsePhoneNumberFromString(input);
  if (!parsed || !parsed.isPossible()) {
    throw new ApiError('invalid_phone', `phone_number ${input} is not a possible number for its country code`);
  }
  // A national trunk prefix after the country code (+33 0612..., +44 07700...) is not E.164: dialled as given it
  // may not route, and as another spelling of one handset it would get round the per-number controls. The parser
  // strips what looks like one; a number valid as written (Belarus's +375 810...) keeps its digits.
  if (parsed.number !== input) {
    const asWritten = new PhoneNumber(input as E164Number);
    if (!asWritten.isValid()) {
      throw new ApiError('invalid_phone', `phone_number ${input} carries a national trunk prefix; in E.164 it is ${parsed.number}`);
    }
    parsed = asWritten;
  }
  const number = parsed;
  // A number outside every allocated block (e.g. Ofcom's drama range) has no
  // exact country; use the main country of its calling code.
  const main = (metadata.country_calling_codes as Record<string, string[]>)[number.countryCallingCode]?.[0];
  let type: LineType | undefined | null = null;
  const lineType = (): LineType | undefined => (type === null ? (type = number.getType() as LineType | undefined) : type);
  return { e164: input, country: number.country ?? main ?? NO_COUNTRY, lineType };
}
