import type { SmscConfig } from '../config/schema.js';
import { decodeGsm7 } from './gsm7.js';
import { normaliseMessageId } from './message-id.js';
import { decodeShortMessage } from './text.js';
import type { DeliveryReceipt, ReceiptState } from './types.js';

/**
 * Delivery receipts (SMPP 3.4 §2.11, §5.2.12, Appendix B) out of a decoded
 * deliver_sm or data_sm (§4.7: a receipt with TLVs, its text if any in
 * message_payload): TLVs first (receipted_message_id, message_state,
 * network_error_code, §5.3.2.12/.35/.31), then the text
 *
 *   id:IIIIIIIIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DDDDDDD err:E text:...
 *
 * for whatever the TLVs left out. Formats seen from real SMSCs and parsed here
 * (each has a unit test in test/unit/sms/receipt.test.ts):
 * - Appendix B as above, the de-facto format (Kannel parses it with
 *   `id:%64[^ ] sub:%d dlvrd:%d submit date:%14[0-9] done date:%14[0-9]
 *   stat:%15[^ ] err:%3[^ ]` and falls back to searching `id:` / `stat:` /
 *   `err:` one by one, gw/smsc/smsc_smpp.c handle_dlr);
 * - Jasmin (jasmin/protocols/smpp/operations.py getReceipt) as an SMSC:
 *   `id:<uuid> submit date:... done date:... stat:DELIVRD err:000`, no
 *   sub/dlvrd/text, plus receipted_message_id and message_state TLVs;
 * - SMPP 3.4 receipts with TLVs and an empty short_message, or the text in
 *   message_payload (Kannel reads message_payload when short_message is empty);
 * - dates with seconds (YYMMDDhhmmss), `submit_date`/`done_date`, keys in any
 *   case (`Id:`, `STAT:`), extra spaces around ':';
 * - long stat names (DELIVERED, UNDELIVERABLE, REJECTED, ACCEPTED...) and
 *   Kannel's buffered forms (ACKED, BUFFRED, BUFFERD) as pending;
 * - network_error_code sent as three ASCII digits instead of type + code
 *   (Kannel's "bogus SMSC" case in error_from_network_error_code);
 * - hex ids in the text: see src/sms/message-id.ts.
 */

/** The fields of a node-smpp deliver_sm or data_sm that make a receipt (see `toReceiptPdu`). */
export interface ReceiptPdu {
  esm_class: number;
  data_coding?: number;
  /**
   * As node-smpp decodes it: `{ message: string | Buffer, udh?: Buffer[] }`
   * (string when it knows the data_coding: 0/1 through its GSM-7 table, 3
   * Latin-1, 8 UTF-16BE; Buffer otherwise), or a bare Buffer / string.
   */
  short_message?: unknown;
  /** TLV 0x0424, decoded by node-smpp like short_message. */
  message_payload?: unknown;
  /** The message octets as they came (pdu.ts `rawMessageOctets`), for a text the decoding above garbled. */
  raw_message?: Buffer;
  /** TLV 0x001E: the message id of submit_sm_resp (§5.3.2.12). */
  receipted_message_id?: string;
  /** TLV 0x0427 (§5.3.2.35). */
  message_state?: number;
  /** TLV 0x0423: node-smpp gives the 3 raw octets (network type, error code 16-bit BE, §5.3.2.31). */
  network_error_code?: Buffer | { network_type: number; error_code: number };
}

/** esm_class bits 5-2, message type (SMPP 3.4 §5.2.12). */
const ESM_TYPE_MASK = 0x3c;
const ESM_SMSC_DELIVERY_RECEIPT = 0x04;
const ESM_INTERMEDIATE_NOTIFICATION = 0x20;

/**
 * True for an SMSC delivery receipt or an intermediate delivery notification.
 * Only the message-type bits count: 0x44 (receipt + UDHI) is a receipt; SME
 * acknowledgements (0x08, 0x10) are not.
 */
export function isReceiptPdu(pdu: Pick<ReceiptPdu, 'esm_class'>): boolean {
  const type = pdu.esm_class & ESM_TYPE_MASK;
  return type === ESM_SMSC_DELIVERY_RECEIPT || type === ESM_INTERMEDIATE_NOTIFICATION;
}

/** A ReceiptPdu from a decoded node-smpp PDU, keeping only values of the expected types. */
export function toReceiptPdu(fields: Readonly<Record<string, unknown>>): ReceiptPdu {
  const id = fields['receipted_message_id'];
  const nec = fields['network_error_code'];
  return {
    esm_class: numberOr(fields['esm_class']) ?? 0,
    data_coding: numberOr(fields['data_coding']),
    short_message: fields['short_message'],
    message_payload: fields['message_payload'],
    raw_message: Buffer.isBuffer(fields['raw_message']) ? fields['raw_message'] : undefined,
    receipted_message_id: typeof id === 'string' ? printablePrefix(id) : Buffer.isBuffer(id) ? printablePrefix(cString(id)) : undefined,
    message_state: numberOr(fields['message_state']),
    network_error_code: Buffer.isBuffer(nec) ? nec : isNetworkErrorObject(nec) ? nec : undefined,
  };
}

/**
 * The receipt carried by `pdu`, with its id normalised for the SMSC's
 * `format`; undefined when the PDU is not a receipt (esm_class), carries no
 * message id anywhere (nothing to match it to), or no state at all (neither
 * message_state nor `stat:`, and not an intermediate notification): answer it
 * and log it, it says nothing about the delivery.
 *
 * The TLV id is read as written in submit_sm_resp (that is what §5.3.2.12
 * says it is) and the text id as a receipt id; when both are present and only
 * the other reading makes them agree, that reading wins, for SMSCs that put
 * the receipt's form in the TLV too.
 */
export function parseReceipt(
  pdu: ReceiptPdu,
  smsc: string,
  format: SmscConfig['messageIdFormat'],
): DeliveryReceipt | undefined {
  if (!isReceiptPdu(pdu)) return undefined;
  const intermediate = (pdu.esm_class & ESM_TYPE_MASK) === ESM_INTERMEDIATE_NOTIFICATION;

  const raw =
    receiptText(pdu.short_message, pdu.data_coding) || receiptText(pdu.message_payload, pdu.data_coding) || '';
  let text = parseReceiptText(raw);
  // Neither id nor stat in the decoded text: read the octets as they came, as ASCII (Kannel and Jasmin read a
  // receipt's bytes whatever data_coding says). Some SMSCs copy the submit's data_coding 8 into the receipt over ASCII
  // text (decoded as UTF-16 it is garbage), or set the UDHI bit (0x44) on a receipt without a header (the decoder
  // takes its first bytes for one).
  if (text.id === undefined && text.stat === undefined && pdu.raw_message !== undefined) {
    const fromOctets = parseReceiptText(pdu.raw_message.toString('latin1'));
    if (fromOctets.id !== undefined || fromOctets.stat !== undefined) text = fromOctets;
  }

  const tlvId = typeof pdu.receipted_message_id === 'string' ? pdu.receipted_message_id.trim() : '';
  const messageId = resolveId(tlvId || undefined, text.id, format);
  if (messageId === undefined) return undefined;

  // What the SMSC wrote: message_state first, then stat:. A value outside SMPP's states (a message_state number
  // past 9, a stat: such as SENT or SUBMITD) is kept as written and taken as pending: a code that did reach the
  // phone must not be failed on a word this engine does not know (the request expires if nothing final follows).
  // A message_state this engine does not know falls back to the text's stat:, as before.
  const tlvState = pdu.message_state !== undefined ? MESSAGE_STATES[pdu.message_state] : undefined;
  const textState = text.stat !== undefined ? stateFromStat(text.stat) : undefined;
  const written: string | undefined =
    text.stat !== undefined ? text.stat.trim() : pdu.message_state !== undefined ? String(pdu.message_state) : undefined;
  const known: ReceiptState | undefined = tlvState ?? textState ?? (intermediate && written === undefined ? 'ENROUTE' : undefined);
  // No state anywhere says nothing about the delivery: ignored (the caller logs it), never taken as a failure.
  if (written === undefined && known === undefined) return undefined;
  let state: ReceiptState = known ?? 'ENROUTE';
  let reported = known === undefined ? written : undefined;
  // §5.2.12: an intermediate delivery notification reports the progress of an attempt, never the message's final
  // outcome (an UNDELIV in one is a failed attempt, with retries to come): pending, whatever state it names.
  if (intermediate && receiptOutcome(state) !== 'pending') {
    reported = state;
    state = 'ENROUTE';
  }

  const nec = networkError(pdu.network_error_code);
  const receipt: DeliveryReceipt = { smsc, messageId, state };
  if (reported !== undefined) receipt.reportedState = reported;
  const error = text.err ?? nec?.text;
  if (error !== undefined) receipt.error = error;
  if (nec?.code) receipt.networkErrorCode = nec.code;
  if (text.doneDate !== undefined) receipt.doneDate = text.doneDate;
  return receipt;
}

/** What a verification does with a receipt state. */
export function receiptOutcome(state: ReceiptState): 'delivered' | 'failed' | 'pending' {
  switch (state) {
    case 'DELIVRD':
      return 'delivered';
    case 'ACCEPTD':
    case 'ENROUTE':
      return 'pending';
    case 'UNDELIV':
    case 'REJECTD':
    case 'EXPIRED':
    case 'DELETED':
    case 'UNKNOWN':
      return 'failed';
  }
}

/** Fields of an Appendix B receipt text, as written (strings, not parsed). */
export interface ReceiptTextFields {
  id?: string;
  sub?: string;
  dlvrd?: string;
  submitDate?: string;
  doneDate?: string;
  stat?: string;
  err?: string;
  text?: string;
}

/**
 * Reads the `key:value` fields of a receipt text in any order and case, with
 * spaces around ':' and `submit_date` / `done_date` spellings; missing fields
 * are left out. Keys are only looked for before `text:`, whose value (the
 * start of the original message) may contain anything.
 */
export function parseReceiptText(raw: string): ReceiptTextFields {
  const fields: ReceiptTextFields = {};
  const textKey = /(?:^|\s)text\s*:/i.exec(raw);
  const head = textKey ? raw.slice(0, textKey.index) : raw;
  if (textKey) fields.text = raw.slice(textKey.index + textKey[0].length);
  for (const [name, pattern] of FIELD_PATTERNS) {
    const m = pattern.exec(head);
    if (m?.[1] !== undefined) fields[name] = m[1];
  }
  return fields;
}

const FIELD_PATTERNS: ReadonlyArray<readonly [Exclude<keyof ReceiptTextFields, 'text'>, RegExp]> = [
  // An empty `id:` must not take the next field ("sub:001") for the id: a value that is a `key:` is none. An id may
  // itself hold a colon ("12:34").
  ['id', /(?:^|\s)id\s*:[ \t]*(?![A-Za-z_]+[ \t]*:)(\S+)/i],
  ['sub', /(?:^|\s)sub\s*:\s*(\d+)/i],
  ['dlvrd', /(?:^|\s)dlvrd\s*:\s*(\d+)/i],
  ['submitDate', /(?:^|\s)submit[\s_-]?date\s*:\s*(\d+)/i],
  ['doneDate', /(?:^|\s)done[\s_-]?date\s*:\s*(\d+)/i],
  ['stat', /(?:^|\s)stat\s*:\s*([A-Za-z_]+|\d+)/i],
  ['err', /(?:^|\s)err\s*:\s*(\S+)/i],
];

/** SMPP 3.4 §5.2.28 message_state; 0 SCHEDULED and 9 SKIPPED are SMPP 5.0 §4.7.15. */
const MESSAGE_STATES: Readonly<Record<number, ReceiptState>> = {
  0: 'ENROUTE',
  1: 'ENROUTE',
  2: 'DELIVRD',
  3: 'EXPIRED',
  4: 'DELETED',
  5: 'UNDELIV',
  6: 'ACCEPTD',
  7: 'UNKNOWN',
  8: 'REJECTD',
  9: 'UNDELIV',
};

/** `stat:` values, short (Appendix B) and long forms, and progress words some SMSCs use; anything else is not known. */
const STATS: Readonly<Record<string, ReceiptState>> = {
  DELIVRD: 'DELIVRD',
  DELIVERED: 'DELIVRD',
  UNDELIV: 'UNDELIV',
  UNDELIVERABLE: 'UNDELIV',
  UNDELIVERED: 'UNDELIV',
  FAILED: 'UNDELIV',
  REJECTD: 'REJECTD',
  REJECTED: 'REJECTD',
  EXPIRED: 'EXPIRED',
  DELETED: 'DELETED',
  ACCEPTD: 'ACCEPTD',
  ACCEPTED: 'ACCEPTD',
  ACKED: 'ACCEPTD',
  ENROUTE: 'ENROUTE',
  EN_ROUTE: 'ENROUTE',
  BUFFRED: 'ENROUTE',
  BUFFERD: 'ENROUTE',
  BUFFERED: 'ENROUTE',
  SCHEDULED: 'ENROUTE',
  SENT: 'ENROUTE',
  SUBMITD: 'ENROUTE',
  SUBMITTED: 'ENROUTE',
  PENDING: 'ENROUTE',
  UNKNOWN: 'UNKNOWN',
};

/** Receipt state for a `stat:` value (a number is read as a message_state); undefined for a value not known. */
export function stateFromStat(stat: string): ReceiptState | undefined {
  const s = stat.trim().toUpperCase();
  if (/^\d+$/.test(s)) return MESSAGE_STATES[Number(s)];
  return STATS[s];
}

/**
 * A message id up to its first character that cannot be in one: an SMSC that sends receipted_message_id without
 * its terminating NUL gets the next TLV's bytes glued to it by the decoder (which reads a C-string to the first
 * NUL, not to the TLV's length), e.g. "12345\u0004'" for 12345 followed by message_state.
 */
function printablePrefix(id: string): string {
  const trimmed = id.replace(/^\s+/, '');
  const bad = trimmed.search(/[^\x21-\x7e]/);
  return bad === -1 ? trimmed : trimmed.slice(0, bad);
}

function resolveId(
  tlvId: string | undefined,
  textId: string | undefined,
  format: SmscConfig['messageIdFormat'],
): string | undefined {
  if (tlvId === undefined) return textId === undefined ? undefined : normaliseMessageId(textId, format, 'dlr');
  const asResp = normaliseMessageId(tlvId, format, 'resp');
  if (textId === undefined) return asResp;
  const fromText = normaliseMessageId(textId, format, 'dlr');
  if (asResp !== fromText && normaliseMessageId(tlvId, format, 'dlr') === fromText) return fromText;
  return asResp;
}

/**
 * node-smpp decodes data_coding 0 and 1 through its GSM-7 table, but a receipt
 * text is ASCII, so the few ASCII bytes that sit elsewhere in GSM-7 come out
 * wrong ('_' 0x5F as '§', '@' 0x40 as '¡', '$' as '¤', ...). This maps them
 * back; letters, digits, ':' and space are the same in both.
 */
const ASCII_FROM_GSM_DECODED = new Map<string, string>();
for (let code = 0x20; code < 0x7f; code++) {
  const gsm = decodeGsm7([code]);
  const ascii = String.fromCharCode(code);
  if (gsm !== ascii) ASCII_FROM_GSM_DECODED.set(gsm, ascii);
}

function receiptText(value: unknown, dataCoding: number | undefined): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') {
    const gsmDecoded = ((dataCoding ?? 0) & 0x0f) <= 1;
    return gsmDecoded ? [...value].map((ch) => ASCII_FROM_GSM_DECODED.get(ch) ?? ch).join('') : value;
  }
  if (value instanceof Uint8Array) {
    // Raw octets: ASCII in practice whatever data_coding says, so Latin-1 (never GSM-7) unless UCS-2.
    const buf = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    return dataCoding === 0x08 ? decodeShortMessage(0x08, buf) : buf.toString('latin1');
  }
  if (typeof value === 'object' && 'message' in value) return receiptText(value.message, dataCoding);
  return undefined;
}

function networkError(
  value: ReceiptPdu['network_error_code'],
): { text: string; code?: { type: number; code: number } } | undefined {
  if (value === undefined) return undefined;
  if (!Buffer.isBuffer(value)) {
    return { text: pad3(value.error_code), code: { type: value.network_type, code: value.error_code } };
  }
  if (value.length < 3) return undefined;
  const ascii = value.subarray(0, 3).toString('latin1');
  // Some SMSCs write the error as three ASCII digits instead of type + code (Kannel handles it the same way).
  if (/^\d{3}$/.test(ascii)) return { text: ascii };
  const type = value.readUInt8(0);
  const code = value.readUInt16BE(1);
  return { text: pad3(code), code: { type, code } };
}

function pad3(n: number): string {
  return String(n).padStart(3, '0');
}

function numberOr(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

function cString(buf: Buffer): string {
  const nul = buf.indexOf(0);
  return buf.toString('latin1', 0, nul === -1 ? buf.length : nul);
}

function isNetworkErrorObject(v: unknown): v is { network_type: number; error_code: number } {
  return (
    typeof v === 'object' &&
    v !== null &&
    'network_type' in v &&
    'error_code' in v &&
    typeof v.network_type === 'number' &&
    typeof v.error_code === 'number'
  );
}
