import type { Logger } from 'pino';

/**
 * The contract between the SMS delivery worker (src/engine/sms-processor.ts)
 * and the SMPP session layer (src/sms/gateway.ts). The worker only sees
 * `SmsGateway`; binds, windows, throttling and reconnects stay behind it.
 */

/** Source address of a submit_sm. */
export interface SmsSender {
  addr: string;
  /** Type of number: 5 alphanumeric, 1 international. */
  ton: number;
  /** Numbering plan: 0 unknown (alphanumeric), 1 E.164. */
  npi: number;
}

/** Text already rendered from its template and checked to fit one part (see src/sms/text.ts). */
export interface EncodedText {
  /** 'gsm7' (data_coding per SMSC: 0 or 1, optionally packed) or 'ucs2' (data_coding 8). */
  encoding: 'gsm7' | 'ucs2';
  /** The text, for the session layer to encode per SMSC (GSM-7 septets, packed or not; UCS-2 big-endian). */
  text: string;
}

export interface SubmitRequest {
  /** For logs and for the id map: the verification this submit delivers. */
  requestId: string;
  /** Destination, E.164 with "+". The session sends it as TON 1 / NPI 1 without "+". */
  to: string;
  from: SmsSender;
  message: EncodedText;
  /** registered_delivery = 1 */
  requestReceipt: boolean;
  /** validity_period, relative, in seconds: the SMSC drops the message if it cannot deliver it by then. */
  validForSeconds?: number;
  /** Workflow step the submit delivers (none outside a workflow): a late submit_sm_resp applies to that step only. */
  step?: number;
  /**
   * Asked once a window slot, the bind's TPS token and the SMSC's shared rate are held, just before submit_sm is
   * written (those waits can last seconds under a backlog): false, and nothing is sent (outcome `withdrawn`). What it
   * throws, submit throws.
   */
  beforeSend?: () => Promise<boolean>;
  logger: Logger;
}

/** What became of one submit attempt. */
export type SubmitOutcome =
  | {
      kind: 'accepted';
      /** Message id as the SMSC wrote it in submit_sm_resp. */
      rawMessageId: string;
      /** Message id normalised for this SMSC (same form as DeliveryReceipt.messageId). */
      messageId: string;
      smsc: string;
      bind: string;
    }
  | {
      /** Nothing was accepted by the SMSC; try again later (BullMQ delay). `connection_lost`: the bind went down before submit_sm was written. */
      kind: 'retry';
      reason: 'throttled' | 'queue_full' | 'no_bind' | 'connection_lost' | 'temporary_error';
      /** SMPP command_status, when the SMSC answered. */
      commandStatus?: number;
      smsc?: string;
    }
  | {
      /**
       * submit_sm was written but no submit_sm_resp came (response timeout, or
       * the connection died with it in flight): the SMSC may have accepted it.
       * Never sent again (sms-processor: `smsc_unconfirmed`).
       */
      kind: 'unconfirmed';
      /** no_message_id: an ESME_ROK without a message_id (the SMSC took it, its receipt cannot be matched by id). */
      reason: 'timeout' | 'connection_lost' | 'no_message_id';
      smsc: string;
      bind: string;
    }
  | {
      /** Not sent: the request's beforeSend said it is no longer wanted (it ended while the submit waited its turn). */
      kind: 'withdrawn';
      smsc: string;
    }
  | {
      /** The SMSC refused the message for good. */
      kind: 'failed';
      reason: string;
      commandStatus: number;
      /** e.g. "ESME_RINVDSTADR" */
      statusName: string;
      smsc: string;
    };

/** What a submit_sm_resp (or a generic_nack in its place) says: every outcome but `unconfirmed`. */
export type AnsweredOutcome = Exclude<SubmitOutcome, { kind: 'unconfirmed' | 'withdrawn' }>;

/** What of a SubmitRequest the handler of a late submit_sm_resp gets. */
export type LateRequest = Pick<SubmitRequest, 'requestId' | 'to' | 'step'>;

/** Final and intermediate message states of SMPP 3.4 / 5.2.28 and the text receipt `stat:` field. */
export type ReceiptState =
  | 'DELIVRD'
  | 'UNDELIV'
  | 'REJECTD'
  | 'EXPIRED'
  | 'DELETED'
  | 'UNKNOWN'
  | 'ACCEPTD'
  | 'ENROUTE';

export interface DeliveryReceipt {
  /** Name of the SMSC (config) it came from. */
  smsc: string;
  /** Normalised message id (same form as SubmitOutcome.messageId). */
  messageId: string;
  state: ReceiptState;
  /** err: field of the text receipt, or network_error_code TLV rendered as text. */
  error?: string;
  /** network_error_code TLV: type + code, when present. */
  networkErrorCode?: { type: number; code: number };
  /** done date, as written by the SMSC (not parsed). */
  doneDate?: string;
  /**
   * The state the SMSC wrote when `state` is not it: a final state in an intermediate notification (taken as
   * ENROUTE), or a stat:/message_state value outside SMPP's list (taken as ENROUTE, pending). For logs.
   */
  reportedState?: string;
  /**
   * The handset's number as the receipt reports it (deliver_sm / data_sm source_addr,
   * digits), to match a receipt to a submit whose submit_sm_resp never came.
   * A number in clear: never logged, never stored.
   */
  handset?: string;
}

/** Gateway-level state for /readyz and metrics. */
export interface SmscStatus {
  name: string;
  bindsUp: number;
  /** Binds whose receiving side is up (`bindMode: transmitter_receiver`: the receiver; else the transceiver): receipts can come in. */
  receiversUp: number;
  bindsConfigured: number;
  /** Binds this worker opens (fewer than configured while sms.smscs[].maxBinds has the others held by other workers). */
  bindsStarted: number;
  inFlight: number;
  window: number;
}

export interface SmsGateway {
  /** Opens every bind (returns once connecting has started; binds come up in the background). */
  start(): Promise<void>;
  /** Stops taking submits, waits for in-flight PDUs (bounded), unbinds, closes. */
  stop(): Promise<void>;
  /** Sends one message on a bind of the SMSC routed for `to`. Never throws for network or SMSC reasons. */
  submit(request: SubmitRequest): Promise<SubmitOutcome>;
  /**
   * The handler for every delivery receipt (deliver_sm or data_sm). The gateway
   * answers the PDU only after the handler's promise resolves (the receipt is
   * persisted), and with a temporary error (ESME_RX_T_APPN) when it rejects, so
   * the SMSC sends it again.
   */
  onReceipt(handler: (receipt: DeliveryReceipt) => Promise<void>): void;
  /**
   * The handler for a submit that `submit` reported `unconfirmed` (timeout)
   * and whose submit_sm_resp arrived later on the same connection, read as an
   * in-time one would be: `accepted` (taken after all: never sent again), or
   * `retry` / `failed` (refused: nothing was sent, nothing will be delivered).
   */
  onLateResponse(handler: (request: LateRequest, outcome: AnsweredOutcome) => void): void;
  status(): SmscStatus[];
}
