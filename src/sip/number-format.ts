/**
 * How a trunk wants the numbers of a call written in its INVITE (`sip.trunks[].calledNumberFormat`,
 * `callingNumberFormat`, `techPrefix`): carriers differ, and one that expects national numbers, or digits without
 * the `+`, or a routing ("tech") prefix before the called number, rejects or misroutes anything else.
 *
 *  - `e164` (default): `+447700900123`, with `;user=phone` on the URI (RFC 3261 19.1.6: a telephone-subscriber, RFC
 *    3966 global number);
 *  - `e164_no_plus`: `447700900123`;
 *  - `national`: the number as dialled within its country, national prefix included, digits only (`07700900123` in
 *    the UK, `2015550123` in the US; libphonenumber's national format). A number it cannot place is written as
 *    `e164_no_plus`.
 *
 * Only `e164` keeps `;user=phone`: the other forms are no global numbers, and RFC 3966 would want a phone-context for
 * them. A tech prefix goes before the called number (`1234#` + `447700900123`), `#` escaped (`%23`: RFC 3261 25.1,
 * the user part has no `#`); the URI then has no `;user=phone` either.
 */
import { parsePhoneNumberFromString } from 'libphonenumber-js';

export type NumberFormat = 'e164' | 'e164_no_plus' | 'national';

/** The characters a tech prefix may have (validated in the config). */
export const TECH_PREFIX_RE = /^[0-9A-Za-z*#+.-]{1,16}$/;

/** The user part of a call's URI for `number` (E.164 with `+`, as the engine keeps them), and whether it takes `;user=phone`. */
export function numberUser(number: string, format: NumberFormat = 'e164', techPrefix = ''): { user: string; phone: boolean } {
  const digits = number.startsWith('+') ? number.slice(1) : number;
  let user: string;
  switch (format) {
    case 'e164':
      user = number;
      break;
    case 'e164_no_plus':
      user = digits;
      break;
    case 'national': {
      const national = number.startsWith('+') ? parsePhoneNumberFromString(number)?.format('NATIONAL').replace(/\D/g, '') : undefined;
      user = national || digits;
      break;
    }
  }
  return { user: techPrefix.replace(/#/g, '%23') + user, phone: format === 'e164' && techPrefix === '' };
}
