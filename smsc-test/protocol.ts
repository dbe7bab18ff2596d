/**
 * What the test SMSC (smsc-test/server.ts) can be told and what it reports:
 * the shared vocabulary of the server and test/helpers/smsc.ts.
 */

export type IdFormat = 'decimal' | 'hex' | 'hex_resp_decimal_dlr' | 'string';
export type ReceiptMode = 'tlv' | 'text' | 'both';
export type NoResponse = 'off' | 'submit' | 'all';
/** The PDU a receipt travels in: deliver_sm (the usual), or data_sm (SMPP 3.4 §4.7). */
export type ReceiptPdu = 'deliver_sm' | 'data_sm';

/** Behaviour switches; every one can be set on the command line and changed at run time (POST /settings). */
export interface SmscSettings {
  /** Accepted credentials; a bind with others gets ESME_RINVPASWD. */
  systemId: string;
  password: string;
  /** Answer every bind with ESME_RBINDFAIL. */
  refuseBinds: boolean;
  /** Answer the binds of these types (e.g. ['receiver']) with ESME_RBINDFAIL; the others as usual. */
  refuseBindTypes: ('transceiver' | 'transmitter' | 'receiver')[];
  /** Delay before submit_sm_resp. */
  respDelayMs: number;
  /** 'submit': submit_sm is never answered; 'all': nothing is (submit_sm, enquire_link, unbind). */
  noResponse: NoResponse;
  /** Session ids that answer nothing at all (as noResponse 'all', for those sessions only). */
  silentSessions: number[];
  /** Session ids that never answer submit_sm (enquire_link still answered). */
  silentSubmitSessions: number[];
  /** The next N submit_sm get ESME_RTHROTTLED (0x58). */
  throttleNext: number;
  /** Fraction (0..1) of submit_sm answered ESME_RTHROTTLED at random. */
  throttleFraction: number;
  /** The next N submit_sm get ESME_RMSGQFUL (0x14). */
  queueFullNext: number;
  /**
   * Drop mode: the next K submit_sm are held unanswered; at the K-th, every
   * connection holding one is destroyed without a response. One-shot (resets to 0).
   */
  dropAfter: number;
  /**
   * Accept-then-drop mode: the next K submit_sm are accepted and stored (a
   * message id, status 0, a receipt scheduled) but held without their
   * submit_sm_resp; at the K-th, every connection holding one is destroyed
   * before any response. The client cannot tell them from dropped ones; a
   * resend would put a second message at the SMSC. One-shot (resets to 0).
   */
  acceptThenDrop: number;
  /** Send receipts (when registered_delivery asks for one). */
  receipts: boolean;
  receiptDelayMs: number;
  /** Send the receipt before submit_sm_resp (the response then comes 50 ms + respDelayMs later). */
  receiptBeforeResp: boolean;
  /** Message id form: resp and receipt decimal / both hex / resp hex and receipt decimal / opaque string. */
  idFormat: IdFormat;
  /** Where the receipt carries its data: TLVs only (empty text), text only, or both. */
  receiptMode: ReceiptMode;
  /**
   * The PDU receipts are sent in. data_sm: esm_class 0x04, the TLVs of `receiptMode`, its text (if any) in
   * message_payload, answered by data_sm_resp.
   */
  receiptPdu: ReceiptPdu;
  /**
   * esm_class and data_coding of the receipts (0x04, 0): SMSCs that set the UDHI bit on a receipt without a header
   * (0x44), or copy the submit's data_coding (8) over its ASCII text, are copied with these.
   */
  receiptEsmClass: number;
  receiptDataCoding: number;
  /** submit_sm_resp ESME_ROK with an empty message_id (the receipt still carries the real one). */
  emptyMessageId: boolean;
  /** Before each submit_sm_resp, an enquire_link_resp carrying the submit's sequence number (an SMSC's bug). */
  wrongResponseFirst: boolean;
  /** After each accepted bind, unbind this many ms later (0: never): a bind limit checked after the bind. */
  unbindAfterBindMs: number;
  /** Intermediate receipts (e.g. ["ACCEPTD", "ENROUTE"]) sent in order before the final one, receiptDelayMs apart. */
  intermediateStates: string[];
  /** Final state for every receipt (any text, e.g. "XYZ" for an unknown stat); null = by destination suffix, else DELIVRD. */
  finalState: string | null;
  /** Destination suffix (digits) → final state. */
  stateBySuffix: Record<string, string>;
  /** Destination prefix (digits, no "+") → command_status answered to submit_sm (permanent error). */
  rejectPrefixes: Record<string, number>;
  /** Receipt retransmissions when deliver_sm_resp is not ESME_ROK (or never comes on a closed connection). */
  receiptRetries: number;
  receiptRetryMs: number;
  /** data_coding 0 text arrives as packed septets. */
  gsm7Packed: boolean;
  /** Print each submit as a JSON line on stdout. */
  logSubmits: boolean;
}

export const DEFAULT_SETTINGS: SmscSettings = {
  systemId: 'flashverify',
  password: 'secret',
  refuseBinds: false,
  refuseBindTypes: [],
  respDelayMs: 0,
  noResponse: 'off',
  silentSessions: [],
  silentSubmitSessions: [],
  throttleNext: 0,
  throttleFraction: 0,
  queueFullNext: 0,
  dropAfter: 0,
  acceptThenDrop: 0,
  receipts: true,
  receiptDelayMs: 20,
  receiptBeforeResp: false,
  idFormat: 'decimal',
  receiptMode: 'both',
  receiptPdu: 'deliver_sm',
  receiptEsmClass: 0x04,
  receiptDataCoding: 0,
  emptyMessageId: false,
  wrongResponseFirst: false,
  unbindAfterBindMs: 0,
  intermediateStates: [],
  finalState: null,
  stateBySuffix: { '0091': 'UNDELIV', '0092': 'REJECTD', '0093': 'EXPIRED' },
  rejectPrefixes: {},
  receiptRetries: 3,
  receiptRetryMs: 100,
  gsm7Packed: false,
  logSubmits: true,
};

export interface SessionRecord {
  id: number;
  remotePort: number;
  systemId: string | null;
  bindType: 'transceiver' | 'transmitter' | 'receiver' | null;
  bound: boolean;
  openedAt: number;
  closedAt: number | null;
  /** 'server' when the SMSC destroyed it (drop mode, action), else 'client'. */
  closedBy: 'client' | 'server' | null;
  unbindReceived: boolean;
  submits: number;
  /** submit_sm received and not (yet) answered. */
  inFlight: number;
  maxInFlight: number;
  enquireLinks: number;
}

export interface SubmitRecord {
  /** ms since the SMSC started (performance.now()). */
  at: number;
  session: number;
  systemId: string | null;
  sequence: number;
  source: string;
  destination: string;
  destTon: number;
  destNpi: number;
  dataCoding: number;
  registeredDelivery: number;
  /** validity_period as this SMSC reads it (a relative one from the time it arrived): ISO time, '' when none. */
  validityPeriod: string;
  /** short_message decoded by the SMSC (GSM 03.38 / IA5 / UCS-2). */
  text: string;
  hex: string;
  /** Message id as written in submit_sm_resp (null when not accepted). */
  messageId: string | null;
  /** command_status answered; null = not answered (yet / ever). */
  status: number | null;
}

export interface ReceiptRecord {
  /** Id as written in the receipt. */
  dlrId: string;
  /** Id as written in submit_sm_resp. */
  respId: string;
  destination: string;
  state: string;
  mode: ReceiptMode;
  pdu: ReceiptPdu;
  /** Sessions it was sent on, one per attempt. */
  sessions: number[];
  /** deliver_sm_resp / data_sm_resp command_status per attempt (null: no answer before the connection closed). */
  statuses: (number | null)[];
  done: boolean;
}

export interface EventRecord {
  at: number;
  type: string;
  session?: number;
  [key: string]: unknown;
}

export interface SmscState {
  settings: SmscSettings;
  sessions: SessionRecord[];
  /** The first 100,000 submit_sm since the last reset (see `totals` for all of them). */
  submits: SubmitRecord[];
  receipts: ReceiptRecord[];
  events: EventRecord[];
  /** Every submit_sm since the last reset, past the log's limit too: a soak's "nobody texted twice". */
  totals: { submits: number; destinations: number; destinationsTwice: number };
}

export type SmscAction =
  /** A PDU with command_id 0x00000999 (expects generic_nack ESME_RINVCMDID). */
  | 'unknown_command'
  /** A deliver_sm whose last TLV is too short to decode (expects generic_nack, bind kept). */
  | 'malformed'
  /** command_length 8: the stream cannot be resynchronised (the client should reconnect). */
  | 'bad_length'
  /** enquire_link from the SMSC (expects enquire_link_resp). */
  | 'enquire_link'
  /** unbind from the SMSC. */
  | 'unbind'
  /** The SMSC loses the session's bind (a failover, a restart of its state): submits answered ESME_RINVBNDSTS. */
  | 'forget_bind'
  /** A mobile-originated data_sm (esm_class 0, text in message_payload): not a receipt (expects data_sm_resp ESME_ROK). */
  | 'data_sm_mo'
  /** Destroy the connection. */
  | 'drop';

/** The first line the server prints on stdout. */
export interface ReadyLine {
  event: 'listening';
  port: number;
  controlPort: number;
  pid: number;
}
