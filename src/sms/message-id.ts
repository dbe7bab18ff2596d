import type { SmscConfig } from '../config/schema.js';

/**
 * Message ids, normalised so the id of a submit_sm_resp and the id of its
 * delivery receipt compare equal as strings.
 *
 * SMPP 3.4 makes message_id an opaque C-string (§5.2.23), but Appendix B
 * describes the receipt's `id:` as decimal, so many SMSCs write the same
 * number in hex in submit_sm_resp and in decimal in the receipt text (Kannel
 * carries the `msg-id-type` setting for exactly this; 0x04000000086ECD50 in
 * the response is 288230376293190992 in the receipt). Ids are 64-bit or
 * longer, so conversions use BigInt, never Number (2^53).
 *
 * Rules per `messageIdFormat` (`source`: where the id was read):
 * - 'string': the id, trimmed; nothing else changes.
 * - 'hex': both sides hex → lowercase hex without leading zeros ("00A1" → "a1").
 * - 'decimal': both sides decimal → decimal without leading zeros ("000123" → "123").
 * - 'hex_resp_decimal_dlr': the response's id is hex, the receipt's decimal →
 *   both become decimal without leading zeros. A receipt id with a hex letter
 *   in it is read as hex (Kannel's fallback for the same case).
 * - 'auto': no base is assumed, so it only works when both sides use the same
 *   one: a hex-looking id ([0-9a-fA-F]+) is lowercased and loses its leading
 *   zeros; any other id (UUIDs, ids with dashes) is only trimmed.
 * All zeros normalise to "0". An id that is not valid in the base its format
 * says (a stray SMSC) is returned trimmed, unchanged: it will not match, but
 * normalising never throws on data from the network.
 */
export function normaliseMessageId(
  id: string,
  format: SmscConfig['messageIdFormat'],
  source: 'resp' | 'dlr',
): string {
  const trimmed = id.trim();
  switch (format) {
    case 'string':
      return trimmed;
    case 'hex':
      return HEX.test(trimmed) ? stripZeros(trimmed.toLowerCase()) : trimmed;
    case 'decimal':
      return DECIMAL.test(trimmed) ? BigInt(trimmed).toString(10) : trimmed;
    case 'hex_resp_decimal_dlr':
      if (source === 'dlr' && DECIMAL.test(trimmed)) return BigInt(trimmed).toString(10);
      return HEX.test(trimmed) ? BigInt(`0x${trimmed}`).toString(10) : trimmed;
    case 'auto':
      return HEX.test(trimmed) ? stripZeros(trimmed.toLowerCase()) : trimmed;
  }
}

const HEX = /^[0-9a-fA-F]+$/;
const DECIMAL = /^[0-9]+$/;

function stripZeros(id: string): string {
  return id.replace(/^0+(?=.)/, '');
}
