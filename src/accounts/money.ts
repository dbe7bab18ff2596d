/** Money is kept in integer micro-units (1e-6 of the currency) so that Lua and JS never round. */
export const MICRO = 1_000_000;

export type Currency = 'GBP' | 'USD' | 'EUR';
export const CURRENCIES: readonly Currency[] = ['GBP', 'USD', 'EUR'];

export function toMicro(amount: number): number {
  return Math.round(amount * MICRO);
}

/** An amount that micro-units hold exactly (at most 6 decimals), checked by round trip: n * 1e6 is not exact from 16384 up. */
export function isWholeMicro(amount: number): boolean {
  const micro = Math.round(amount * MICRO);
  return Number.isSafeInteger(micro) && micro / MICRO === amount;
}

/** Micro-units to a JSON number with at most 6 decimals (0.004, 42.5). */
export function fromMicro(micro: number): number {
  return Number((micro / MICRO).toFixed(6));
}
