import type { Config } from '../config/schema.js';
import { toMicro, type Currency } from '../accounts/money.js';
import type { Method } from './types.js';

/** Price of one attempt, in micro-units of the account's currency. */
export function priceMicro(pricing: Config['pricing'], method: Method, country: string, currency: Currency): number {
  const table = pricing[method];
  const gbp = table[country] ?? table.default ?? 0;
  return toMicro(gbp * pricing.fx[currency]);
}
