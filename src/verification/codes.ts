import { randomInt } from 'node:crypto';

/** A uniformly random numeric code of `length` digits (leading zeros allowed). */
export function generateCode(length: number): string {
  return String(randomInt(0, 10 ** length)).padStart(length, '0');
}
