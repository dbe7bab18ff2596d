import { describe, expect, it } from 'vitest';
import { relativeValidity } from '../../../src/sms/session.js';

describe('relativeValidity (SMPP 3.4 §7.1.1, relative: YYMMDDhhmmsstnnR)', () => {
  it.each([
    [300, '000000000500000R'],
    [299.4, '000000000500000R'], // rounded up: never shorter than the code's life
    [59, '000000000059000R'],
    [3600, '000000010000000R'],
    [86_400 + 3661, '000001010101000R'],
    [0.2, '000000000001000R'], // at least one second
    [1e9, '000099000000000R'], // at most 99 days
  ])('%s s → %s', (seconds, expected) => {
    expect(relativeValidity(seconds)).toBe(expected);
    expect(relativeValidity(seconds)).toHaveLength(16);
  });
});
