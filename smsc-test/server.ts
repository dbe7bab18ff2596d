/**
 * A test SMSC: a real SMPP 3.4 peer on loopback, built on node-smpp's server,
 * with switches for the misbehaviour the session layer must survive. See
 * smsc-test/README.md for the flags and the control channel.
 *
 *   node --import tsx smsc-test/server.ts --port 0 --system-id fv --password pw
 *
 * First stdout line: {"event":"listening","port":N,"controlPort":M,"pid":P}.
 */
import { randomUUID } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import smpp, { type PDU, type Session } from 'smpp';
import {
  DEFAULT_SETTINGS,
  type EventRecord,
  type IdFormat,
  type NoResponse,
  type ReadyLine,
  type ReceiptMode,
  type ReceiptPdu,
  type ReceiptRecord,
  type SessionRecord,
  type SmscAction,
  type SmscSettings,
  type SmscState,
  type SubmitRecord,
} from './protocol.js';

// The SMSC must see submit_sm's short_message as sent (bytes), not as node-smpp
// would decode it: drop the decode filter for submit_sm in this process only.
const shortMessageParam = smpp.commands.submit_sm?.params?.short_message;
if (shortMessageParam) delete shortMessageParam.filter;

const ESME = {
  ROK: 0x00,
  RINVBNDSTS: 0x04,
  RBINDFAIL: 0x0d,
  RINVPASWD: 0x0e,
  RMSGQFUL: 0x14,
  RTHROTTLED: 0x58,
} as const;

/** SMPP 3.4 §5.2.28 message_state values. */
const MESSAGE_STATE: Record<string, number> = {
  ENROUTE: 1,
  DELIVRD: 2,
  EXPIRED: 3,
  DELETED: 4,
  UNDELIV: 5,
  ACCEPTD: 6,
  UNKNOWN: 7,
  REJECTD: 8,
};

// --- settings from the command line ------------------------------------------------

function parseMap(text: string | undefined, value: (v: string) => string | number): Record<string, never> | Record<string, ReturnType<typeof value>> {
  const out: Record<string, string | number> = {};
  for (const pair of (text ?? '').split(',').filter(Boolean)) {
    const [k, v] = pair.split('=');
    if (k && v) out[k.replace(/^\+/, '')] = value(v);
  }
  return out;
}

const OPTIONS = {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
    'control-port': { type: 'string', default: '0' },
    'system-id': { type: 'string' },
    password: { type: 'string' },
    'refuse-binds': { type: 'boolean' },
    'resp-delay-ms': { type: 'string' },
    'no-response': { type: 'string' },
    throttle: { type: 'string' },
    'throttle-fraction': { type: 'string' },
    'queue-full': { type: 'string' },
    'drop-after': { type: 'string' },
    'accept-then-drop': { type: 'string' },
    'intermediate-states': { type: 'string' },
    'no-receipts': { type: 'boolean' },
    'receipt-delay-ms': { type: 'string' },
    'receipt-before-resp': { type: 'boolean' },
    'id-format': { type: 'string' },
    'receipt-mode': { type: 'string' },
    'receipt-pdu': { type: 'string' },
    'final-state': { type: 'string' },
    'state-suffix': { type: 'string' },
    'reject-prefix': { type: 'string' },
    'receipt-retries': { type: 'string' },
    'receipt-retry-ms': { type: 'string' },
    'gsm7-packed': { type: 'boolean' },
    quiet: { type: 'boolean' },
    'max-lifetime-ms': { type: 'string', default: '600000' },
    standalone: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
} as const;
const { values: args } = parseArgs({ options: OPTIONS, strict: true });

if (args.help) {
  // What each switch does: smsc-test/README.md, "Settings".
  const flags = Object.entries(OPTIONS).map(([name, o]) => `--${name}${o.type === 'string' ? ' V' : ''}`);
  process.stdout.write(`test SMSC (see smsc-test/README.md, "Settings"): node --import tsx smsc-test/server.ts ${flags.map((f) => `[${f}]`).join(' ')}\n`);
  process.exit(0);
}

const num = (v: string | undefined, d: number): number => (v === undefined ? d : Number(v));
const settings: SmscSettings = {
  ...DEFAULT_SETTINGS,
  systemId: args['system-id'] ?? DEFAULT_SETTINGS.systemId,
  password: args.password ?? DEFAULT_SETTINGS.password,
  refuseBinds: args['refuse-binds'] ?? false,
  refuseBindTypes: [],
  respDelayMs: num(args['resp-delay-ms'], 0),
  noResponse: (args['no-response'] ?? 'off') as NoResponse,
  throttleNext: num(args.throttle, 0),
  throttleFraction: num(args['throttle-fraction'], 0),
  queueFullNext: num(args['queue-full'], 0),
  dropAfter: num(args['drop-after'], 0),
  acceptThenDrop: num(args['accept-then-drop'], 0),
  intermediateStates: (args['intermediate-states'] ?? '').split(',').filter(Boolean),
  receipts: !args['no-receipts'],
  receiptDelayMs: num(args['receipt-delay-ms'], DEFAULT_SETTINGS.receiptDelayMs),
  receiptBeforeResp: args['receipt-before-resp'] ?? false,
  idFormat: (args['id-format'] ?? 'decimal') as IdFormat,
  receiptMode: (args['receipt-mode'] ?? 'both') as ReceiptMode,
  receiptPdu: (args['receipt-pdu'] ?? 'deliver_sm') as ReceiptPdu,
  finalState: args['final-state'] ?? null,
  stateBySuffix: args['state-suffix'] ? parseMap(args['state-suffix'], (v) => v) as Record<string, string> : DEFAULT_SETTINGS.stateBySuffix,
  rejectPrefixes: parseMap(args['reject-prefix'], (v) => Number(v)) as Record<string, number>,
  receiptRetries: num(args['receipt-retries'], DEFAULT_SETTINGS.receiptRetries),
  receiptRetryMs: num(args['receipt-retry-ms'], DEFAULT_SETTINGS.receiptRetryMs),
  gsm7Packed: args['gsm7-packed'] ?? false,
  logSubmits: !args.quiet,
};

// --- state ---------------------------------------------------------------------------

const t0 = performance.now();
const now = (): number => Math.round((performance.now() - t0) * 10) / 10;
const sessions = new Map<Session, SessionRecord>();
let submits: SubmitRecord[] = [];
/** submit_sm per destination, every one since the last reset (the log above stops at MAX_LOG). */
let perDestination = new Map<string, number>();
let submitTotal = 0;
let receipts: ReceiptRecord[] = [];
let events: EventRecord[] = [];
let nextSessionId = 1;
let nextId = 100_000_000;
/** Submits held by drop mode: session → count. */
const held = new Map<Session, number>();
let heldTotal = 0;
const MAX_LOG = 100_000;

function out(line: object): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function event(type: string, session: SessionRecord | undefined, extra: Record<string, unknown> = {}): void {
  if (events.length < MAX_LOG) events.push({ at: now(), type, ...(session ? { session: session.id } : {}), ...extra });
}

function isSilent(rec: SessionRecord, what: 'submit' | 'other'): boolean {
  if (settings.noResponse === 'all' || settings.silentSessions.includes(rec.id)) return true;
  return what === 'submit' && (settings.noResponse === 'submit' || settings.silentSubmitSessions.includes(rec.id));
}

// --- text ------------------------------------------------------------------------------

function unpackSeptets(buf: Buffer): Buffer {
  const count = Math.floor((buf.length * 8) / 7);
  const out: number[] = [];
  for (let i = 0; i < count; i += 1) {
    const bit = i * 7;
    const byte = bit >> 3;
    const shift = bit & 7;
    const lo = buf[byte] ?? 0;
    const hi = buf[byte + 1] ?? 0;
    out.push(((lo >> shift) | (hi << (8 - shift))) & 0x7f);
  }
  // 7 spare bits in the last octet hold no character: CR (3GPP TS 23.038 §6.1.2.3.1) or, from
  // many encoders, zero. Ambiguous with a real trailing '@' / CR; test texts end in digits.
  const last = out[out.length - 1];
  if ((buf.length * 8) % 7 === 0 && (last === 0x0d || last === 0x00)) out.pop();
  return Buffer.from(out);
}

function decodeText(dataCoding: number, bytes: Buffer): string {
  if (dataCoding === 8) {
    const swapped = Buffer.from(bytes);
    if (swapped.length % 2 === 0) swapped.swap16();
    return swapped.toString('utf16le');
  }
  if (dataCoding === 0) return smpp.gsmCoder.decode(settings.gsm7Packed ? unpackSeptets(bytes) : bytes, 0);
  return bytes.toString('latin1'); // 1 (IA5/ASCII), 3 (Latin-1)
}

// --- message ids --------------------------------------------------------------------

function makeIds(): { resp: string; dlr: string } {
  const n = nextId++;
  switch (settings.idFormat) {
    case 'hex':
      return { resp: n.toString(16).toUpperCase(), dlr: n.toString(16).toUpperCase() };
    case 'hex_resp_decimal_dlr':
      return { resp: n.toString(16).toUpperCase(), dlr: String(n) };
    case 'string': {
      const id = randomUUID();
      return { resp: id, dlr: id };
    }
    default:
      return { resp: String(n), dlr: String(n) };
  }
}

function finalStateFor(destination: string): string {
  if (settings.finalState) return settings.finalState;
  for (const [suffix, state] of Object.entries(settings.stateBySuffix)) {
    if (destination.endsWith(suffix)) return state;
  }
  return 'DELIVRD';
}

// --- receipts ---------------------------------------------------------------------

function smppDate(d: Date): string {
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${p(d.getUTCFullYear() % 100)}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}`;
}

interface ReceiptJob {
  record: ReceiptRecord;
  systemId: string | null;
  preferred: Session;
  source: string;
  destination: string;
  text: string;
  submitted: Date;
}

function receiptTarget(job: ReceiptJob): Session | undefined {
  const usable = (s: Session, r: SessionRecord): boolean =>
    r.bound && r.closedAt === null && r.systemId === job.systemId && (r.bindType === 'transceiver' || r.bindType === 'receiver');
  const pref = sessions.get(job.preferred);
  if (pref && usable(job.preferred, pref)) return job.preferred;
  for (const [s, r] of sessions) if (usable(s, r)) return s;
  return undefined;
}

function sendReceipt(job: ReceiptJob, waits = 0): void {
  const { record } = job;
  if (record.done) return;
  const target = receiptTarget(job);
  if (!target) {
    // No receiver bound right now: wait for one (bounded: 100 waits).
    if (waits < 100) setTimeout(() => sendReceipt(job, waits + 1), settings.receiptRetryMs);
    else record.done = true;
    return;
  }
  const rec = sessions.get(target);
  const state = record.state;
  const delivered = state === 'DELIVRD';
  const failing = !delivered && state !== 'ACCEPTD' && state !== 'ENROUTE';
  const fields: Record<string, unknown> = {
    source_addr_ton: 1,
    source_addr_npi: 1,
    source_addr: job.destination,
    dest_addr_ton: 5,
    dest_addr_npi: 0,
    destination_addr: job.source,
    esm_class: settings.receiptEsmClass,
    data_coding: settings.receiptDataCoding,
  };
  // data_sm has no short_message (§4.7.1): its text, if any, goes in message_payload.
  const textField = record.pdu === 'data_sm' ? 'message_payload' : 'short_message';
  if (record.mode !== 'tlv') {
    const text =
      `id:${record.dlrId} sub:001 dlvrd:${delivered ? '001' : '000'} submit date:${smppDate(job.submitted)} ` +
      `done date:${smppDate(new Date())} stat:${state} err:${failing ? '001' : '000'} text:${job.text.slice(0, 20)}`;
    fields[textField] = Buffer.from(text, 'latin1');
  } else if (record.pdu === 'deliver_sm') {
    fields.short_message = Buffer.alloc(0);
  }
  if (record.mode !== 'text') {
    fields.receipted_message_id = record.dlrId;
    const ms = MESSAGE_STATE[state];
    if (ms !== undefined) fields.message_state = ms;
    if (failing) fields.network_error_code = Buffer.from([3, 0x00, 0x22]);
  }
  const attempt = record.statuses.length;
  record.sessions.push(rec?.id ?? 0);
  record.statuses.push(null);
  const pdu = new smpp.PDU(record.pdu, fields);
  const retry = (): void => {
    if (record.statuses.length <= settings.receiptRetries) setTimeout(() => sendReceipt(job), settings.receiptRetryMs);
    else record.done = true;
  };
  let answered = false;
  const onClose = (): void => {
    if (!answered) retry();
  };
  target.socket.once('close', onClose);
  target.send(pdu, (resp: PDU) => {
    answered = true;
    target.socket.off('close', onClose);
    record.statuses[attempt] = resp.command_status;
    event(`${record.pdu}_resp`, rec, { seq: resp.sequence_number, status: resp.command_status, command: resp.command, dlrId: record.dlrId });
    if (resp.command_status === ESME.ROK && resp.command === `${record.pdu}_resp`) record.done = true;
    else retry();
  });
}

/** The intermediate receipts (intermediateStates), then the final one, receiptDelayMs apart from `delayMs`. */
function scheduleReceipt(session: Session, rec: SessionRecord, submit: SubmitRecord, ids: { resp: string; dlr: string }, delayMs: number): void {
  const states = [...settings.intermediateStates, finalStateFor(submit.destination)];
  states.forEach((state, i) => {
    const record: ReceiptRecord = {
      dlrId: ids.dlr,
      respId: ids.resp,
      destination: submit.destination,
      state,
      mode: settings.receiptMode,
      pdu: settings.receiptPdu,
      sessions: [],
      statuses: [],
      done: false,
    };
    if (receipts.length < MAX_LOG) receipts.push(record);
    const job: ReceiptJob = {
      record,
      systemId: rec.systemId,
      preferred: session,
      source: submit.source,
      destination: submit.destination,
      text: submit.text,
      submitted: new Date(),
    };
    const at = delayMs + i * settings.receiptDelayMs;
    if (at <= 0) sendReceipt(job);
    else setTimeout(() => sendReceipt(job), at);
  });
}

// --- submit_sm ----------------------------------------------------------------------

function statusFor(destination: string): number {
  for (const [prefix, status] of Object.entries(settings.rejectPrefixes)) {
    if (destination.startsWith(prefix)) return status;
  }
  if (settings.throttleNext > 0) {
    settings.throttleNext -= 1;
    return ESME.RTHROTTLED;
  }
  if (settings.queueFullNext > 0) {
    settings.queueFullNext -= 1;
    return ESME.RMSGQFUL;
  }
  if (settings.throttleFraction > 0 && Math.random() < settings.throttleFraction) return ESME.RTHROTTLED;
  return ESME.ROK;
}

function str(pdu: PDU, field: string): string {
  const v = pdu[field];
  return typeof v === 'string' ? v : '';
}
function int(pdu: PDU, field: string): number {
  const v = pdu[field];
  return typeof v === 'number' ? v : 0;
}

function onSubmit(session: Session, rec: SessionRecord, pdu: PDU): void {
  rec.submits += 1;
  const raw = pdu.short_message;
  const bytes = Buffer.isBuffer(raw) ? raw : Buffer.alloc(0);
  const dataCoding = int(pdu, 'data_coding');
  const submit: SubmitRecord = {
    at: now(),
    session: rec.id,
    systemId: rec.systemId,
    sequence: pdu.sequence_number,
    source: str(pdu, 'source_addr'),
    destination: str(pdu, 'destination_addr'),
    destTon: int(pdu, 'dest_addr_ton'),
    destNpi: int(pdu, 'dest_addr_npi'),
    dataCoding,
    registeredDelivery: int(pdu, 'registered_delivery'),
    validityPeriod: pdu.validity_period instanceof Date ? pdu.validity_period.toISOString() : str(pdu, 'validity_period'),
    text: decodeText(dataCoding, bytes),
    hex: bytes.toString('hex'),
    messageId: null,
    status: null,
  };
  if (submits.length < MAX_LOG) submits.push(submit);
  submitTotal += 1;
  perDestination.set(submit.destination, (perDestination.get(submit.destination) ?? 0) + 1);
  if (settings.logSubmits) out({ event: 'submit', ...submit });
  // Bytes already buffered when the SMSC destroyed the socket: nobody can be answered, nothing is accepted.
  if (session.socket.destroyed) return;
  if (!rec.bound) {
    session.send(pdu.response({ command_status: ESME.RINVBNDSTS }));
    submit.status = ESME.RINVBNDSTS;
    return;
  }
  rec.inFlight += 1;
  rec.maxInFlight = Math.max(rec.maxInFlight, rec.inFlight);
  if (isSilent(rec, 'submit')) return;
  if (settings.dropAfter > 0 || settings.acceptThenDrop > 0) {
    const accept = settings.acceptThenDrop > 0;
    if (accept) {
      // Stored as an SMSC does before answering: it will be delivered (and receipted) whatever happens to the connection.
      const ids = makeIds();
      submit.status = ESME.ROK;
      submit.messageId = ids.resp;
      if (settings.receipts && (submit.registeredDelivery & 0x03) !== 0) scheduleReceipt(session, rec, submit, ids, settings.receiptDelayMs);
    }
    held.set(session, (held.get(session) ?? 0) + 1);
    heldTotal += 1;
    if (heldTotal >= (accept ? settings.acceptThenDrop : settings.dropAfter)) {
      settings.dropAfter = 0;
      settings.acceptThenDrop = 0;
      heldTotal = 0;
      const victims = [...held.keys()];
      held.clear();
      for (const s of victims) dropSession(s, accept ? 'accept_then_drop' : 'drop_after');
    }
    return;
  }
  const status = statusFor(submit.destination);
  const ids = status === ESME.ROK ? makeIds() : undefined;
  const wantsReceipt = ids !== undefined && settings.receipts && (submit.registeredDelivery & 0x03) !== 0;
  let respDelay = settings.respDelayMs;
  if (wantsReceipt && ids && settings.receiptBeforeResp) {
    scheduleReceipt(session, rec, submit, ids, 0);
    respDelay += 50;
  }
  const respond = (): void => {
    if (rec.closedAt !== null || session.socket.destroyed) return;
    rec.inFlight -= 1;
    submit.status = status;
    submit.messageId = ids?.resp ?? null;
    if (settings.wrongResponseFirst) session.send(new smpp.PDU('enquire_link_resp', { sequence_number: pdu.sequence_number }));
    session.send(pdu.response(ids ? { message_id: settings.emptyMessageId ? '' : ids.resp } : { command_status: status }));
    if (wantsReceipt && ids && !settings.receiptBeforeResp) scheduleReceipt(session, rec, submit, ids, settings.receiptDelayMs);
  };
  if (respDelay > 0) setTimeout(respond, respDelay);
  else respond();
}

function dropSession(session: Session, reason: string): void {
  const rec = sessions.get(session);
  if (rec && rec.closedAt === null) rec.closedBy = 'server';
  event('drop', rec, { reason, inFlight: rec?.inFlight ?? 0 });
  session.socket.destroy();
}

// --- the SMPP server -----------------------------------------------------------------

function onBind(session: Session, rec: SessionRecord, pdu: PDU, bindType: 'transceiver' | 'transmitter' | 'receiver'): void {
  const systemId = str(pdu, 'system_id');
  let status: number = ESME.ROK;
  if (settings.refuseBinds || settings.refuseBindTypes.includes(bindType)) status = ESME.RBINDFAIL;
  else if (systemId !== settings.systemId || str(pdu, 'password') !== settings.password) status = ESME.RINVPASWD;
  else if (rec.bound) status = ESME.RINVBNDSTS;
  event('bind', rec, { bindType, systemId, status, interfaceVersion: int(pdu, 'interface_version') });
  if (status === ESME.ROK) {
    rec.bound = true;
    rec.systemId = systemId;
    rec.bindType = bindType;
    session.send(pdu.response({ system_id: 'smsc-test' }));
    if (settings.unbindAfterBindMs > 0) {
      setTimeout(() => {
        if (rec.closedAt === null && !session.socket.destroyed) session.send(new smpp.PDU('unbind', { sequence_number: 0x7ffffff0 }));
      }, settings.unbindAfterBindMs);
    }
  } else {
    session.send(pdu.response({ command_status: status }));
  }
}

const server = smpp.createServer((session: Session) => {
  const rec: SessionRecord = {
    id: nextSessionId++,
    remotePort: session.socket.remotePort ?? 0,
    systemId: null,
    bindType: null,
    bound: false,
    openedAt: now(),
    closedAt: null,
    closedBy: null,
    unbindReceived: false,
    submits: 0,
    inFlight: 0,
    maxInFlight: 0,
    enquireLinks: 0,
  };
  sessions.set(session, rec);
  event('connect', rec, { remotePort: rec.remotePort });
  session.on('error', (err: Error) => event('error', rec, { error: err.message }));
  session.socket.on('close', () => {
    if (rec.closedAt === null) {
      rec.closedAt = now();
      rec.closedBy ??= 'client';
    }
    held.delete(session);
    event('close', rec, { closedBy: rec.closedBy });
  });
  session.on('bind_transceiver', (pdu: PDU) => onBind(session, rec, pdu, 'transceiver'));
  session.on('bind_transmitter', (pdu: PDU) => onBind(session, rec, pdu, 'transmitter'));
  session.on('bind_receiver', (pdu: PDU) => onBind(session, rec, pdu, 'receiver'));
  session.on('submit_sm', (pdu: PDU) => onSubmit(session, rec, pdu));
  session.on('enquire_link', (pdu: PDU) => {
    rec.enquireLinks += 1;
    event('enquire_link', rec, { seq: pdu.sequence_number });
    if (!isSilent(rec, 'other')) session.send(pdu.response());
  });
  session.on('unbind', (pdu: PDU) => {
    rec.unbindReceived = true;
    event('unbind', rec, { seq: pdu.sequence_number, inFlight: rec.inFlight });
    if (!isSilent(rec, 'other')) session.send(pdu.response());
  });
  session.on('generic_nack', (pdu: PDU) => event('generic_nack', rec, { seq: pdu.sequence_number, status: pdu.command_status }));
  session.on('enquire_link_resp', (pdu: PDU) => event('enquire_link_resp', rec, { seq: pdu.sequence_number, status: pdu.command_status }));
  session.on('unbind_resp', (pdu: PDU) => event('unbind_resp', rec, { seq: pdu.sequence_number, status: pdu.command_status }));
});
server.on('error', (err: Error) => {
  process.stderr.write(`smsc-test: ${err.message}\n`);
  process.exit(1);
});

// --- actions -------------------------------------------------------------------------

let actionSequence = 0x10000;

function header(commandId: number, status: number, seq: number, body: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(16 + body.length, 0);
  b.writeUInt32BE(commandId >>> 0, 4);
  b.writeUInt32BE(status, 8);
  b.writeUInt32BE(seq, 12);
  return Buffer.concat([b, body]);
}

function runAction(action: SmscAction, only: number | undefined): { session: number; seq: number }[] {
  const done: { session: number; seq: number }[] = [];
  for (const [session, rec] of sessions) {
    if (rec.closedAt !== null || !rec.bound || (only !== undefined && rec.id !== only)) continue;
    const seq = actionSequence++;
    switch (action) {
      case 'unknown_command':
        session.socket.write(header(0x00000999, 0, seq));
        break;
      case 'malformed': {
        // deliver_sm: 16 one-octet mandatory fields + sm_length 0, then user_message_reference
        // (an int16 TLV) declared 1 octet long: the decoder reads past the end.
        const body = Buffer.concat([Buffer.alloc(17, 0), Buffer.from([0x02, 0x04, 0x00, 0x01, 0x01])]);
        session.socket.write(header(0x00000005, 0, seq, body));
        break;
      }
      case 'bad_length': {
        const b = Buffer.alloc(8);
        b.writeUInt32BE(8, 0);
        b.writeUInt32BE(0x00000015, 4);
        session.socket.write(b);
        break;
      }
      case 'enquire_link':
        session.send(new smpp.PDU('enquire_link', { sequence_number: seq }));
        break;
      case 'unbind':
        session.send(new smpp.PDU('unbind', { sequence_number: seq }));
        break;
      case 'forget_bind':
        rec.bound = false;
        event('forget_bind', rec, {});
        break;
      case 'data_sm_mo': {
        const mo = new smpp.PDU('data_sm', {
          sequence_number: seq,
          source_addr_ton: 1,
          source_addr_npi: 1,
          source_addr: '447700900999',
          dest_addr_ton: 5,
          dest_addr_npi: 0,
          destination_addr: 'FlashVerify',
          esm_class: 0,
          data_coding: 0,
          message_payload: Buffer.from('STOP', 'latin1'),
        });
        session.send(mo, (resp: PDU) => event('data_sm_resp', rec, { seq: resp.sequence_number, status: resp.command_status, command: resp.command }));
        break;
      }
      case 'drop':
        dropSession(session, 'action');
        break;
    }
    event(`action_${action}`, rec, { seq });
    done.push({ session: rec.id, seq });
  }
  return done;
}

// --- control channel (loopback HTTP) ----------------------------------------------

function state(): SmscState {
  let destinationsTwice = 0;
  for (const n of perDestination.values()) if (n > 1) destinationsTwice += 1;
  const totals = { submits: submitTotal, destinations: perDestination.size, destinationsTwice };
  return { settings, sessions: [...sessions.values()], submits, receipts, events, totals };
}

async function body(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

function reply(res: ServerResponse, status: number, payload: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(payload));
}

const control = createHttpServer((req, res) => {
  void (async () => {
    try {
      if (req.method === 'GET' && req.url === '/state') return reply(res, 200, state());
      if (req.method === 'POST' && req.url === '/settings') {
        const patch = (await body(req)) as Partial<SmscSettings>;
        for (const key of Object.keys(patch) as (keyof SmscSettings)[]) {
          if (!(key in settings)) return reply(res, 400, { error: `unknown setting ${key}` });
        }
        Object.assign(settings, patch);
        event('settings', undefined, { patch });
        return reply(res, 200, settings);
      }
      if (req.method === 'POST' && req.url === '/reset') {
        // Forget everything that is over: logs, closed sessions, receipts still being retried.
        for (const r of receipts) r.done = true;
        submits = [];
        perDestination = new Map();
        submitTotal = 0;
        receipts = [];
        events = [];
        for (const [s, rec] of sessions) if (rec.closedAt !== null) sessions.delete(s);
        for (const rec of sessions.values()) {
          rec.maxInFlight = rec.inFlight;
          rec.submits = 0;
          rec.enquireLinks = 0;
        }
        return reply(res, 200, { ok: true });
      }
      if (req.method === 'POST' && req.url === '/action') {
        const { action, session } = (await body(req)) as { action: SmscAction; session?: number };
        return reply(res, 200, { sent: runAction(action, session) });
      }
      reply(res, 404, { error: 'not found' });
    } catch (err) {
      reply(res, 500, { error: err instanceof Error ? err.message : String(err) });
    }
  })();
});

function listen(s: { listen(port: number, host: string, cb: () => void): unknown; address(): AddressInfo | string | null }, port: number): Promise<number> {
  return new Promise((resolve) => s.listen(port, args.host ?? '127.0.0.1', () => resolve((s.address() as AddressInfo).port)));
}

const port = await listen(server, Number(args.port));
const controlPort = await listen(control, Number(args['control-port']));
const ready: ReadyLine = { event: 'listening', port, controlPort, pid: process.pid };
out(ready);

// Never outlive the test run that forgot us.
setTimeout(() => process.exit(0), Number(args['max-lifetime-ms'])).unref();
const shutdown = (): void => {
  for (const s of sessions.keys()) s.socket.destroy();
  server.close();
  control.close();
  process.exit(0);
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
// Exit when the parent goes away (stdin closed), unless run by hand as a standalone SMSC (--standalone).
if (!args.standalone) {
  process.stdin.on('end', shutdown);
  process.stdin.resume();
}
