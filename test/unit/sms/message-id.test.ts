import { describe, expect, it } from 'vitest';
import { normaliseMessageId } from '../../../src/sms/message-id.js';

describe('normaliseMessageId', () => {
  it("'string' only trims", () => {
    expect(normaliseMessageId(' 00AbC-1 ', 'string', 'resp')).toBe('00AbC-1');
    expect(normaliseMessageId('00AbC-1', 'string', 'dlr')).toBe('00AbC-1');
  });

  it("'hex' gives lowercase hex without leading zeros on both sides", () => {
    expect(normaliseMessageId('00A1B2', 'hex', 'resp')).toBe('a1b2');
    expect(normaliseMessageId('a1b2', 'hex', 'dlr')).toBe('a1b2');
    expect(normaliseMessageId('0000', 'hex', 'dlr')).toBe('0');
  });

  it("'decimal' gives decimal without leading zeros, beyond 2^53", () => {
    expect(normaliseMessageId('000123', 'decimal', 'resp')).toBe('123');
    expect(normaliseMessageId('18446744073709551615', 'decimal', 'dlr')).toBe('18446744073709551615');
    expect(normaliseMessageId('0009007199254740993', 'decimal', 'dlr')).toBe('9007199254740993');
  });

  it("'hex_resp_decimal_dlr' makes the hex response id and the decimal receipt id equal, beyond 2^53", () => {
    // 0x04000000086ECD50 = 288230376293190992 (> 2^53: Number would round it)
    const resp = normaliseMessageId('04000000086ECD50', 'hex_resp_decimal_dlr', 'resp');
    const dlr = normaliseMessageId('288230376293190992', 'hex_resp_decimal_dlr', 'dlr');
    expect(resp).toBe('288230376293190992');
    expect(dlr).toBe(resp);
    expect(normaliseMessageId('20000000000001', 'hex_resp_decimal_dlr', 'resp')).toBe('9007199254740993');
    expect(normaliseMessageId('009007199254740993', 'hex_resp_decimal_dlr', 'dlr')).toBe('9007199254740993');
    expect(normaliseMessageId('ffffffffffffffff', 'hex_resp_decimal_dlr', 'resp')).toBe('18446744073709551615');
    // A response id of digits only is still hex.
    expect(normaliseMessageId('10', 'hex_resp_decimal_dlr', 'resp')).toBe('16');
    expect(normaliseMessageId('10', 'hex_resp_decimal_dlr', 'dlr')).toBe('10');
  });

  it("'hex_resp_decimal_dlr' reads a receipt id with hex letters as hex", () => {
    expect(normaliseMessageId('086ecd50', 'hex_resp_decimal_dlr', 'dlr')).toBe(String(0x086ecd50));
  });

  it("'auto' lowercases hex-looking ids and strips their leading zeros, and leaves other ids alone", () => {
    expect(normaliseMessageId('000ABC', 'auto', 'resp')).toBe(normaliseMessageId('abc', 'auto', 'dlr'));
    expect(normaliseMessageId('0042', 'auto', 'resp')).toBe('42');
    expect(normaliseMessageId(' 16fd2706-8baf-433b-82eb-8c7fada847da', 'auto', 'dlr')).toBe(
      '16fd2706-8baf-433b-82eb-8c7fada847da',
    );
  });

  it('returns an id that is invalid for its format trimmed, without throwing', () => {
    expect(normaliseMessageId(' xyz ', 'hex', 'resp')).toBe('xyz');
    expect(normaliseMessageId('12a', 'decimal', 'dlr')).toBe('12a');
    expect(normaliseMessageId('id-1', 'hex_resp_decimal_dlr', 'resp')).toBe('id-1');
    expect(normaliseMessageId('', 'hex', 'resp')).toBe('');
  });
});
