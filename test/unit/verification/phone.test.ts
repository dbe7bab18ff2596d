import { describe, expect, it } from 'vitest';
import { ApiError } from '../../../src/verification/errors.js';
import { lineTypeOf } from '../../../src/verification/fraud-rules.js';
import { parseDestination } from '../../../src/verification/phone.js';

describe('parseDestination', () => {
  it('tells the country of numbers that share a calling code, and the type from the same parse', () => {
    const cases: [string, string, string | undefined][] = [
      ['+441481256789', 'GG', 'FIXED_LINE'], // Guernsey shares +44 with GB
      ['+441908731234', 'GB', 'FIXED_LINE'],
      ['+448001234567', 'GB', 'TOLL_FREE'],
      ['+14165550123', 'CA', 'FIXED_LINE_OR_MOBILE'], // Canada shares +1 with the US
      ['+19005550123', 'US', 'PREMIUM_RATE'],
      ['+33612345678', 'FR', 'MOBILE'],
      // Ofcom's drama range: possible, in no allocated block: the calling code's main country, no type.
      ['+447700900123', 'GB', undefined],
    ];
    for (const [e164, country, type] of cases) {
      const d = parseDestination(e164);
      expect([d.e164, d.country]).toEqual([e164, country]);
      expect(d.lineType?.()).toBe(type);
      // The same as a parse of its own (what the fraud screen did before).
      expect(d.lineType?.()).toBe(lineTypeOf(e164));
    }
  });

  it('refuses what is not E.164, or not a possible number of its calling code', () => {
    for (const bad of ['447700900123', '+44 7700 900123', '+4477', '+44770090012345678', 12, undefined]) {
      expect(() => parseDestination(bad)).toThrow(ApiError);
    }
    expect(() => parseDestination('+4412345')).toThrow(/not a possible number for its country code/);
  });

  it('refuses a national trunk prefix after the country code, naming the E.164 form (one handset, one spelling)', () => {
    for (const [given, e164] of [['+330612345678', '+33612345678'], ['+4407700900123', '+447700900123'], ['+49030123456', '+4930123456']]) {
      expect(() => parseDestination(given)).toThrow(`phone_number ${given} carries a national trunk prefix; in E.164 it is ${e164}`);
      expect(parseDestination(e164).e164).toBe(e164);
    }
    // A leading 0 that is part of the number (Italy, Côte d'Ivoire) is E.164.
    for (const e164 of ['+390612345678', '+2250701234567']) expect(parseDestination(e164).e164).toBe(e164);
    // Digits the parser takes for a prefix in a number valid as written (Belarus's 810 premium range) are kept.
    const by = parseDestination('+3758101234567');
    expect([by.e164, by.country, by.lineType?.()]).toEqual(['+3758101234567', 'BY', 'PREMIUM_RATE']);
  });

  it('numbers of no country (satellite, international networks) are ZZ', () => {
    for (const e164 of ['+881612345678', '+8821612345678', '+870773123456']) expect(parseDestination(e164).country).toBe('ZZ');
  });
});
