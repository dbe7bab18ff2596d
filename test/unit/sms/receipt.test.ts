import smpp from 'smpp';
import { describe, expect, it } from 'vitest';
import {
  isReceiptPdu,
  parseReceipt,
  parseReceiptText,
  receiptOutcome,
  stateFromStat,
  toReceiptPdu,
  type ReceiptPdu,
} from '../../../src/sms/receipt.js';
import type { ReceiptState } from '../../../src/sms/types.js';
import { PduFramer, type SmppPdu } from '../../../src/sms/pdu.js';

const RECEIPT = 0x04;
const INTERMEDIATE = 0x20;

/** A deliver_sm as the SMSC sends it, through node-smpp's encoder and decoder (what the session layer gets). */
function wire(fields: Record<string, unknown>): ReceiptPdu {
  const bytes = new smpp.PDU('deliver_sm', { source_addr: '447700900123', destination_addr: 'FlashVerify', ...fields }).toBuffer();
  return toReceiptPdu(new smpp.PDU(bytes));
}

describe('isReceiptPdu (SMPP 3.4 §5.2.12 esm_class bits 5-2)', () => {
  it.each([
    [0x04, true],
    [0x20, true],
    [0x44, true], // receipt + UDHI: Kannel notes some SMSCs send it
    [0x84, true], // receipt + reply path
    [0x00, false],
    [0x08, false], // SME delivery acknowledgement
    [0x10, false], // SME manual/user acknowledgement
    [0x40, false],
    [0x24, false],
  ])('esm_class %i → %s', (esm, expected) => {
    expect(isReceiptPdu({ esm_class: esm })).toBe(expected);
  });
});

describe('parseReceipt', () => {
  it('returns undefined for a deliver_sm that is not a receipt (MO text)', () => {
    expect(parseReceipt({ esm_class: 0, short_message: { message: 'id:1 stat:DELIVRD' } }, 'a', 'auto')).toBeUndefined();
    expect(parseReceipt(wire({ short_message: Buffer.from('id:1 stat:DELIVRD') }), 'a', 'auto')).toBeUndefined();
  });

  it('returns undefined for a receipt without any message id', () => {
    expect(parseReceipt({ esm_class: RECEIPT, short_message: 'sub:001 stat:DELIVRD', message_state: 2 }, 'a', 'auto')).toBeUndefined();
    expect(parseReceipt({ esm_class: RECEIPT }, 'a', 'auto')).toBeUndefined();
  });

  it('reads TLVs only (SMPP 3.4 receipt with an empty short_message)', () => {
    const r = parseReceipt(
      wire({
        esm_class: RECEIPT,
        short_message: Buffer.alloc(0),
        receipted_message_id: '0A1B2C',
        message_state: 2,
        network_error_code: Buffer.from([0x03, 0x00, 0x00]),
      }),
      'smsc-a',
      'hex',
    );
    expect(r).toEqual({ smsc: 'smsc-a', messageId: 'a1b2c', state: 'DELIVRD', error: '000', networkErrorCode: { type: 3, code: 0 } });
  });

  it.each([
    [1, 'ENROUTE'],
    [2, 'DELIVRD'],
    [3, 'EXPIRED'],
    [4, 'DELETED'],
    [5, 'UNDELIV'],
    [6, 'ACCEPTD'],
    [7, 'UNKNOWN'],
    [8, 'REJECTD'],
  ] as const)('maps message_state %i to %s', (state, expected) => {
    expect(parseReceipt({ esm_class: RECEIPT, receipted_message_id: '1', message_state: state }, 'a', 'auto')?.state).toBe(expected);
  });

  it('reads the text only (SMPP 3.3 style, Appendix B format as Kannel parses it)', () => {
    const r = parseReceipt(
      wire({
        esm_class: RECEIPT,
        short_message: Buffer.from(
          'id:1234567890 sub:001 dlvrd:001 submit date:0610191018 done date:0610191019 stat:DELIVRD err:000 text:Your FlashVeri',
        ),
      }),
      'smsc-a',
      'decimal',
    );
    expect(r).toEqual({ smsc: 'smsc-a', messageId: '1234567890', state: 'DELIVRD', error: '000', doneDate: '0610191019' });
  });

  it('reads a Jasmin receipt: TLVs plus "id:<uuid> submit date:... done date:... stat:... err:..." without sub/dlvrd/text', () => {
    const r = parseReceipt(
      wire({
        esm_class: RECEIPT,
        short_message: Buffer.from(
          'id:16fd2706-8baf-433b-82eb-8c7fada847da submit date:2401021530 done date:2401021531 stat:UNDELIV err:011',
        ),
        receipted_message_id: '16fd2706-8baf-433b-82eb-8c7fada847da',
        message_state: 5,
      }),
      'jasmin',
      'string',
    );
    expect(r).toEqual({
      smsc: 'jasmin',
      messageId: '16fd2706-8baf-433b-82eb-8c7fada847da',
      state: 'UNDELIV',
      error: '011',
      doneDate: '2401021531',
    });
  });

  it('combines a TLV id with the text stat (receipted_message_id without message_state, Kannel\'s "partial SMPP v3.4")', () => {
    const r = parseReceipt(
      { esm_class: RECEIPT, receipted_message_id: 'abc', short_message: { message: 'id:abc stat:EXPIRED err:027' } },
      'a',
      'auto',
    );
    expect(r).toMatchObject({ messageId: 'abc', state: 'EXPIRED', error: '027' });
  });

  it('combines a text id with the TLV state', () => {
    const r = parseReceipt({ esm_class: RECEIPT, message_state: 8, short_message: 'id:77 done date:2401021531' }, 'a', 'auto');
    expect(r).toMatchObject({ messageId: '77', state: 'REJECTD', doneDate: '2401021531' });
  });

  it('prefers the TLVs to the text when both say something', () => {
    const r = parseReceipt(
      { esm_class: RECEIPT, receipted_message_id: '5', message_state: 2, short_message: 'id:5 stat:UNDELIV' },
      'a',
      'auto',
    );
    expect(r?.state).toBe('DELIVRD');
  });

  it('reads keys in any case, with extra spaces and submit_date/done_date spellings', () => {
    const text = 'Id: 0042  SUB:1 DLVRD:1  Submit_Date:240102153000 Done_date : 240102153107  STAT : delivrd  ERR:0  Text:hi';
    expect(parseReceipt({ esm_class: RECEIPT, short_message: text }, 'a', 'auto')).toEqual({
      smsc: 'a',
      messageId: '42',
      state: 'DELIVRD',
      error: '0',
      doneDate: '240102153107',
    });
  });

  it('ignores a receipt without any state (no message_state, no stat:) rather than failing it as UNKNOWN', () => {
    expect(parseReceipt({ esm_class: RECEIPT, short_message: 'id:9' }, 'a', 'auto')).toBeUndefined();
    expect(parseReceipt({ esm_class: RECEIPT, short_message: '', receipted_message_id: '9' }, 'a', 'auto')).toBeUndefined();
    // An intermediate notification without a state is still en route.
    expect(parseReceipt({ esm_class: 0x20, short_message: 'id:9' }, 'a', 'auto')?.state).toBe('ENROUTE');
  });

  it('tolerates missing fields', () => {
    expect(parseReceipt({ esm_class: RECEIPT, short_message: 'id:9 stat:DELIVRD' }, 'a', 'auto')).toEqual({
      smsc: 'a',
      messageId: '9',
      state: 'DELIVRD',
    });
  });

  it('does not read keys out of the text: field', () => {
    const r = parseReceipt({ esm_class: RECEIPT, short_message: 'id:9 stat:UNDELIV text:stat:DELIVRD id:1' }, 'a', 'auto');
    expect(r).toMatchObject({ messageId: '9', state: 'UNDELIV' });
    expect(parseReceiptText('id:9 text:stat:DELIVRD id:1').text).toBe('stat:DELIVRD id:1');
  });

  it('never takes a final state from an intermediate notification (§5.2.12): a failed attempt is not the outcome', () => {
    for (const pdu of [
      { esm_class: INTERMEDIATE, receipted_message_id: '9', message_state: 5 },
      { esm_class: INTERMEDIATE, short_message: 'id:9 stat:UNDELIV err:001' },
      { esm_class: INTERMEDIATE, short_message: 'id:9 stat:DELIVRD' },
    ]) {
      const r = parseReceipt(pdu, 'a', 'auto');
      expect(r?.state).toBe('ENROUTE');
      expect(['UNDELIV', 'DELIVRD']).toContain(r?.reportedState);
    }
  });

  it('reads a receipted_message_id sent without its NUL up to the glued bytes of the next TLV', () => {
    // node-smpp reads the C-string to the first NUL: "12345" + message_state TLV (0x0427, length 1, value 2) + NUL.
    const glued = toReceiptPdu({ esm_class: RECEIPT, receipted_message_id: "12345\u0004'\u0000\u0001\u0002" });
    expect(glued.receipted_message_id).toBe('12345');
    expect(toReceiptPdu({ esm_class: RECEIPT, receipted_message_id: Buffer.from([0x41, 0x42, 0x04, 0x27, 0x00]) }).receipted_message_id).toBe('AB');
    expect(parseReceipt({ ...glued, message_state: 2 }, 'a', 'auto')).toMatchObject({ messageId: '12345', state: 'DELIVRD' });
  });

  it('treats an intermediate notification (esm_class 0x20) as a receipt, pending', () => {
    const withStat = parseReceipt({ esm_class: INTERMEDIATE, short_message: 'id:9 stat:ENROUTE' }, 'a', 'auto');
    expect(withStat?.state).toBe('ENROUTE');
    expect(receiptOutcome(withStat!.state)).toBe('pending');
    expect(parseReceipt({ esm_class: INTERMEDIATE, receipted_message_id: '9' }, 'a', 'auto')?.state).toBe('ENROUTE');
    expect(parseReceipt({ esm_class: INTERMEDIATE, receipted_message_id: '9', message_state: 6 }, 'a', 'auto')?.state).toBe('ACCEPTD');
  });

  it('reads the text from message_payload when short_message is empty (Kannel does the same)', () => {
    const r = parseReceipt(
      wire({
        esm_class: RECEIPT,
        short_message: Buffer.alloc(0),
        message_payload: Buffer.from('id:00ff sub:001 dlvrd:000 submit date:2401021530 done date:2401021531 stat:REJECTD err:001 text:'),
      }),
      'a',
      'hex',
    );
    expect(r).toMatchObject({ messageId: 'ff', state: 'REJECTD', error: '001' });
  });

  it('reads an ASCII receipt sent under data_coding 0, which node-smpp decodes through GSM-7 ("_" becomes "§")', () => {
    const pdu = wire({
      esm_class: RECEIPT,
      data_coding: 0,
      short_message: Buffer.from('id:msg_7@x$ submit_date:2401021530 done_date:2401021531 stat:DELIVRD err:000'),
    });
    const decoded = (pdu.short_message as { message: string }).message;
    expect(decoded).toContain('§'); // what node-smpp hands over
    expect(parseReceipt(pdu, 'a', 'string')).toEqual({
      smsc: 'a',
      messageId: 'msg_7@x$',
      state: 'DELIVRD',
      error: '000',
      doneDate: '2401021531',
    });
  });

  it('reads a receipt whose text is UCS-2 (data_coding 8)', () => {
    const text = Buffer.from('id:31 stat:DELIVRD err:000', 'utf16le').swap16();
    expect(parseReceipt(wire({ esm_class: RECEIPT, data_coding: 8, short_message: text }), 'a', 'auto')).toMatchObject({
      messageId: '31',
      state: 'DELIVRD',
    });
    expect(parseReceipt({ esm_class: RECEIPT, data_coding: 8, short_message: text }, 'a', 'auto')?.messageId).toBe('31');
  });

  it('reads a raw Buffer short_message as Latin-1, never GSM-7', () => {
    const r = parseReceipt({ esm_class: RECEIPT, data_coding: 0, short_message: Buffer.from('id:a_b stat:DELIVRD') }, 'a', 'string');
    expect(r?.messageId).toBe('a_b');
  });

  it('matches a hex response id with the decimal id of the receipt text (hex_resp_decimal_dlr)', () => {
    const r = parseReceipt(
      { esm_class: RECEIPT, short_message: 'id:288230376293190992 sub:001 dlvrd:001 stat:DELIVRD err:000' },
      'a',
      'hex_resp_decimal_dlr',
    );
    expect(r?.messageId).toBe('288230376293190992');
    // The TLV carries the submit_sm_resp form (hex), the text the receipt form (decimal).
    const both = parseReceipt(
      { esm_class: RECEIPT, receipted_message_id: '04000000086ECD50', message_state: 2, short_message: 'id:288230376293190992 stat:DELIVRD' },
      'a',
      'hex_resp_decimal_dlr',
    );
    expect(both?.messageId).toBe('288230376293190992');
  });

  it('notices an SMSC that writes the decimal form in the TLV too, when the text agrees', () => {
    const r = parseReceipt(
      { esm_class: RECEIPT, receipted_message_id: '288230376293190992', message_state: 2, short_message: 'id:288230376293190992 stat:DELIVRD' },
      'a',
      'hex_resp_decimal_dlr',
    );
    expect(r?.messageId).toBe('288230376293190992');
  });

  it('reads hex ids written in the text with leading zeros and in upper case (hex)', () => {
    const r = parseReceipt({ esm_class: RECEIPT, receipted_message_id: 'c449ab97', short_message: 'id:00C449AB97 stat:ACCEPTD' }, 'a', 'hex');
    expect(r).toMatchObject({ messageId: 'c449ab97', state: 'ACCEPTD' });
  });

  it('reads a 128-bit hex id from the text, as some SMSCs write it (hex / hex_resp_decimal_dlr)', () => {
    const text = 'id:c449ab9744f47b6af1879e49e75e4f40 sub:001 dlvrd:0 submit date:0610191018 done date:0610191018 stat:ACCEPTD err:0 text:This is an Acti';
    expect(parseReceipt({ esm_class: RECEIPT, short_message: text }, 'a', 'hex')).toMatchObject({
      messageId: 'c449ab9744f47b6af1879e49e75e4f40',
      state: 'ACCEPTD',
    });
    const resp = 'C449AB9744F47B6AF1879E49E75E4F40';
    expect(parseReceipt({ esm_class: RECEIPT, short_message: text }, 'a', 'hex_resp_decimal_dlr')?.messageId).toBe(
      BigInt(`0x${resp}`).toString(),
    );
  });

  it('reads network_error_code as type + 16-bit code, and as three ASCII digits from SMSCs that send that', () => {
    expect(
      parseReceipt({ esm_class: RECEIPT, receipted_message_id: '1', message_state: 5, network_error_code: Buffer.from([0x03, 0x00, 0x22]) }, 'a', 'auto'),
    ).toMatchObject({ state: 'UNDELIV', error: '034', networkErrorCode: { type: 3, code: 34 } });
    const ascii = parseReceipt(
      { esm_class: RECEIPT, receipted_message_id: '1', message_state: 5, network_error_code: Buffer.from('011') },
      'a',
      'auto',
    );
    expect(ascii?.error).toBe('011');
    expect(ascii?.networkErrorCode).toBeUndefined();
    expect(
      parseReceipt({ esm_class: RECEIPT, receipted_message_id: '1', message_state: 5, network_error_code: { network_type: 1, error_code: 513 } }, 'a', 'auto'),
    ).toMatchObject({ error: '513', networkErrorCode: { type: 1, code: 513 } });
  });

  it('keeps the text err: when there is also a network_error_code', () => {
    const r = parseReceipt(
      { esm_class: RECEIPT, short_message: 'id:1 stat:UNDELIV err:001', network_error_code: Buffer.from([0x03, 0x00, 0x01]) },
      'a',
      'auto',
    );
    expect(r).toMatchObject({ error: '001', networkErrorCode: { type: 3, code: 1 } });
  });
});

describe('receipt text quirks', () => {
  it('an empty id: is no id (the next field is not taken for it)', () => {
    expect(parseReceiptText('id: sub:001 dlvrd:001 stat:DELIVRD err:000').id).toBeUndefined();
    expect(parseReceiptText('id:\tsub:001 stat:DELIVRD').id).toBeUndefined();
    expect(parseReceiptText('id: 0042 sub:001 stat:DELIVRD').id).toBe('0042');
    expect(parseReceiptText('sub:001 id:AB-7 stat:DELIVRD').id).toBe('AB-7');
    expect(parseReceiptText('id:12:34 sub:001 stat:DELIVRD').id).toBe('12:34');
    expect(parseReceiptText('id:ABC123 sub:001 stat:DELIVRD').id).toBe('ABC123');
  });

  it('a receipt node-smpp decodes to nothing (UDHI set, or data_coding 8 over ASCII) is read from its octets, framed by PduFramer', () => {
    const text = 'id:77 sub:001 dlvrd:001 submit date:2612071200 done date:2612071200 stat:DELIVRD err:000 text:';
    for (const [esm, dc] of [
      [0x44, 0],
      [0x04, 8],
    ] as const) {
      const bytes = new smpp.PDU('deliver_sm', { sequence_number: 9, source_addr: '447700900001', destination_addr: 'FV', esm_class: esm, data_coding: dc, short_message: Buffer.from(text, 'latin1') }).toBuffer();
      const [frame] = new PduFramer().push(bytes);
      expect(frame?.kind).toBe('pdu');
      const pdu = (frame as { pdu: SmppPdu }).pdu;
      expect(Object.keys(pdu)).not.toContain('raw_message');
      expect(parseReceipt(toReceiptPdu(pdu as unknown as Record<string, unknown>), 'a', 'string')).toMatchObject({ messageId: '77', state: 'DELIVRD' });
    }
  });
});

describe('stateFromStat', () => {
  it.each([
    ['DELIVRD', 'DELIVRD'],
    ['DELIVERED', 'DELIVRD'],
    ['delivered', 'DELIVRD'],
    ['UNDELIV', 'UNDELIV'],
    ['UNDELIVERABLE', 'UNDELIV'],
    ['REJECTD', 'REJECTD'],
    ['REJECTED', 'REJECTD'],
    ['ACCEPTD', 'ACCEPTD'],
    ['ACCEPTED', 'ACCEPTD'],
    ['ACKED', 'ACCEPTD'],
    ['EXPIRED', 'EXPIRED'],
    ['DELETED', 'DELETED'],
    ['ENROUTE', 'ENROUTE'],
    ['BUFFRED', 'ENROUTE'],
    ['UNKNOWN', 'UNKNOWN'],
    ['2', 'DELIVRD'],
    ['SENT', 'ENROUTE'],
    ['SUBMITD', 'ENROUTE'],
    ['WHATEVER', undefined],
    ['12', undefined],
    ['', undefined],
  ] as const)('%s → %s', (stat, state) => {
    expect(stateFromStat(stat)).toBe(state);
  });

  it('takes a stat or message_state it does not know as pending, keeping what was written (never a failure)', () => {
    const r = parseReceipt({ esm_class: RECEIPT, short_message: 'id:1 stat:SOMETHNG' }, 'a', 'auto');
    expect(r).toMatchObject({ messageId: '1', state: 'ENROUTE', reportedState: 'SOMETHNG' });
    expect(receiptOutcome(r!.state)).toBe('pending');
    expect(parseReceipt({ esm_class: RECEIPT, receipted_message_id: '1', message_state: 42 }, 'a', 'auto')).toMatchObject({ state: 'ENROUTE', reportedState: '42' });
    // A message_state it does not know still falls back to the text's stat:.
    expect(parseReceipt({ esm_class: RECEIPT, short_message: 'id:1 stat:DELIVRD', message_state: 42 }, 'a', 'auto')?.state).toBe('DELIVRD');
    // UNKNOWN itself is SMPP's final state 7: a failure, as before.
    expect(parseReceipt({ esm_class: RECEIPT, short_message: 'id:1 stat:UNKNOWN' }, 'a', 'auto')?.state).toBe('UNKNOWN');
  });
});

describe('receiptOutcome', () => {
  it.each([
    ['DELIVRD', 'delivered'],
    ['UNDELIV', 'failed'],
    ['REJECTD', 'failed'],
    ['EXPIRED', 'failed'],
    ['DELETED', 'failed'],
    ['UNKNOWN', 'failed'],
    ['ACCEPTD', 'pending'],
    ['ENROUTE', 'pending'],
  ] as Array<[ReceiptState, string]>)('%s → %s', (state, outcome) => {
    expect(receiptOutcome(state)).toBe(outcome);
  });
});
