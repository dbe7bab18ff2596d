import smpp, { type PDU } from 'smpp';

/**
 * The SMPP PDU codec, typed: node-smpp's `PDU` does the encoding and
 * decoding; framing (splitting the TCP stream into PDUs by command_length)
 * is done here by `PduFramer`, not by node-smpp's Session, because node-smpp's
 * reader stops reading for good after one PDU it cannot decode (its `_busy`
 * flag is left set when `new PDU()` throws) and drops the sequence number the
 * generic_nack must carry (SMPP 3.4 §4.3.1).
 */

/** A decoded PDU: header fields plus parameters / TLVs read with the helpers below. */
export type SmppPdu = PDU;

/** SMPP 3.4 §5.1.3 command_status values this project acts on. */
export const CommandStatus = {
  ESME_ROK: 0x00,
  ESME_RINVCMDLEN: 0x02,
  ESME_RINVCMDID: 0x03,
  ESME_RINVBNDSTS: 0x04,
  ESME_RSYSERR: 0x08,
  ESME_RINVDSTADR: 0x0b,
  ESME_RBINDFAIL: 0x0d,
  ESME_RMSGQFUL: 0x14,
  ESME_RTHROTTLED: 0x58,
  ESME_RX_T_APPN: 0x64,
} as const;

/** SMPP 3.4 §5.1.2.1 command_id of generic_nack. */
export const GENERIC_NACK_ID = 0x80000000;

/** Largest PDU accepted; node-smpp refuses larger ones too. */
export const MAX_PDU_LENGTH = smpp.PDU.maxLength;

const statusNames = new Map<number, string>();
for (const [name, value] of Object.entries(smpp.errors)) {
  // Several names share a value in node-smpp's table; keep the first (the SMPP 3.4 name).
  if (!statusNames.has(value)) statusNames.set(value, name);
}

/** "ESME_RINVDSTADR" for 0x0B; "0x000000C5" when node-smpp has no name for it. */
export function commandStatusName(status: number): string {
  return statusNames.get(status) ?? `0x${status.toString(16).toUpperCase().padStart(8, '0')}`;
}

/** True for a command node-smpp knows (so `encodePdu` can build it). */
export function isKnownCommand(command: string): boolean {
  return Object.prototype.hasOwnProperty.call(smpp.commands, command);
}

export function encodePdu(command: string, fields: Record<string, unknown> = {}): Buffer {
  return new smpp.PDU(command, fields).toBuffer();
}

/** A PDU response header only (any command_status, no body): what SMPP 3.4 §3.2 asks for on errors. */
export function encodeHeader(commandId: number, status: number, sequence: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(16, 0);
  b.writeUInt32BE(commandId >>> 0, 4);
  b.writeUInt32BE(status >>> 0, 8);
  b.writeUInt32BE(sequence >>> 0, 12);
  return b;
}

export function pduString(pdu: SmppPdu, field: string): string | undefined {
  const v = pdu[field];
  if (typeof v === 'string') return v;
  if (Buffer.isBuffer(v)) return v.toString('latin1');
  return undefined;
}

export function pduNumber(pdu: SmppPdu, field: string): number | undefined {
  const v = pdu[field];
  return typeof v === 'number' ? v : undefined;
}

/** One frame out of the byte stream: decoded, or the header of a PDU node-smpp could not decode. */
export type Frame =
  | { kind: 'pdu'; pdu: SmppPdu }
  | { kind: 'undecodable'; commandId: number; sequence: number; length: number; error: string };

/**
 * Splits a byte stream into PDUs by command_length. A PDU whose body does
 * not decode is reported with its header, and the stream stays in step. A
 * command_length below 16 or above MAX_PDU_LENGTH cannot be stepped over
 * safely: `push` throws, and the connection must be closed.
 */
export class PduFramer {
  private buffered: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    const frames: Frame[] = [];
    while (this.buffered.length >= 4) {
      const length = this.buffered.readUInt32BE(0);
      if (length < 16 || length > MAX_PDU_LENGTH) {
        this.buffered = Buffer.alloc(0);
        throw new Error(`invalid command_length ${length}`);
      }
      if (this.buffered.length < length) break;
      const raw = this.buffered.subarray(0, length);
      this.buffered = this.buffered.subarray(length);
      frames.push(decodeFrame(Buffer.from(raw)));
    }
    return frames;
  }
}

const DELIVER_SM = 0x00000005;
const DATA_SM = 0x00000103;
const MESSAGE_PAYLOAD_TLV = 0x0424;

/**
 * The message octets of a deliver_sm (short_message, else its message_payload TLV) or a data_sm (message_payload), as
 * they came, before node-smpp decodes them by data_coding and esm_class (SMPP 3.4 §4.6.1, §4.7.1, §5.3.2.32):
 * receipt.ts reads a receipt's text from them when the decoded form says nothing (a text receipt sent with the
 * UDHI bit set, or with the submit's data_coding 8 over ASCII text). Undefined when the body does not parse.
 */
export function rawMessageOctets(raw: Buffer): Buffer | undefined {
  const commandId = raw.readUInt32BE(4);
  if (commandId !== DELIVER_SM && commandId !== DATA_SM) return undefined;
  let at = 16;
  const cstring = (): boolean => {
    const nul = raw.indexOf(0, at);
    if (nul < 0) return false;
    at = nul + 1;
    return true;
  };
  // service_type, source (ton, npi, addr), destination (ton, npi, addr), esm_class
  if (!cstring()) return undefined;
  at += 2;
  if (!cstring()) return undefined;
  at += 2;
  if (!cstring()) return undefined;
  let message: Buffer | undefined;
  if (commandId === DELIVER_SM) {
    // esm_class, protocol_id, priority_flag, schedule_delivery_time, validity_period, registered_delivery,
    // replace_if_present_flag, data_coding, sm_default_msg_id, sm_length, short_message
    at += 3;
    if (!cstring() || !cstring()) return undefined;
    at += 4;
    const length = raw[at];
    if (length === undefined || at + 1 + length > raw.length) return undefined;
    if (length > 0) message = raw.subarray(at + 1, at + 1 + length);
    at += 1 + length;
  } else {
    at += 3; // esm_class, registered_delivery, data_coding
  }
  // TLVs: message_payload when there was no short_message.
  while (message === undefined && at + 4 <= raw.length) {
    const tag = raw.readUInt16BE(at);
    const length = raw.readUInt16BE(at + 2);
    if (at + 4 + length > raw.length) return undefined;
    if (tag === MESSAGE_PAYLOAD_TLV) message = raw.subarray(at + 4, at + 4 + length);
    at += 4 + length;
  }
  return message;
}

function decodeFrame(raw: Buffer): Frame {
  try {
    const pdu = new smpp.PDU(raw);
    const octets = rawMessageOctets(raw);
    // Not enumerable: nothing that walks a PDU's fields (logs, responses) sees it.
    if (octets !== undefined) Object.defineProperty(pdu, 'raw_message', { value: Buffer.from(octets), enumerable: false });
    return { kind: 'pdu', pdu };
  } catch (err) {
    return {
      kind: 'undecodable',
      commandId: raw.readUInt32BE(4),
      sequence: raw.readUInt32BE(12),
      length: raw.length,
      error: err instanceof Error ? err.message : String(err),
    };
  }
}
