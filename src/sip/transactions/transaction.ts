/**
 * Pieces shared by the client transactions (RFC 3261 17.1), after onsip/SIP.js:
 * one class per state machine, states as a string enum, one stateTransition()
 * that owns the timers, one named method per timer.
 */
import type { Logger } from 'pino';
import type { Clock, SipTimerConfig } from '../clock.js';
import type { ParsedResponse, SipRequest } from '../message.js';

export enum TransactionState {
  Calling = 'Calling',
  Trying = 'Trying',
  Proceeding = 'Proceeding',
  Completed = 'Completed',
  Terminated = 'Terminated',
}

/** Where a client transaction sends its request: bound to one destination by the stack. */
export interface TransactionTransport {
  /** TCP: true (no retransmissions, Timers D/K are zero). UDP: false. */
  readonly reliable: boolean;
  /** Send bytes; failures are reported later through the transaction's onTransportError(). */
  send(data: Buffer): void;
}

/** The transaction user (TU): the UAC core of one call. */
export interface ClientTransactionUser {
  /** A response the TU must see (RFC 3261 17.1.1.2 / 17.1.2.2); retransmissions absorbed by the transaction are not passed up. */
  receiveResponse(response: ParsedResponse): void;
  /** Timer B or Timer F fired: no final response. */
  onRequestTimeout(): void;
  /** A fatal transport error while the request was outstanding. */
  onTransportError(error: Error): void;
  /**
   * INVITE only: its connection (TCP, TLS) was closed because the far end sent something that could not be framed
   * before any response was read. The INVITE reached the far end, which may be ringing the phone: the transaction
   * waits as in Proceeding, and this TU decides (a CANCEL). Absent: a transport error like any other.
   */
  onUnreadableResponse?(error: Error): void;
}

export interface ClientTransactionOptions {
  /** The request; its top Via must carry `branch`. */
  request: SipRequest;
  /** Branch of the top Via (z9hG4bK...). */
  branch: string;
  transport: TransactionTransport;
  user: ClientTransactionUser;
  clock: Clock;
  timers: SipTimerConfig;
  logger: Logger;
  /** Called once when the transaction reaches Terminated (for the stack's transaction table). */
  onTerminated?: () => void;
}

/** RFC 3261 17.1.3: client transactions are matched by top Via branch + CSeq method. */
export function clientTransactionKey(branch: string, method: string): string {
  return branch + '|' + method;
}

/** The TU of a transaction that has let its own go (letGo): nothing is passed up any more. */
const DETACHED_USER: ClientTransactionUser = {
  receiveResponse: () => undefined,
  onRequestTimeout: () => undefined,
  onTransportError: () => undefined,
};
const NO_BYTES = Buffer.alloc(0);

export abstract class ClientTransaction {
  /** The request; after letGo() a placeholder with the method only. */
  protected request: SipRequest;
  readonly branch: string;
  readonly method: string;
  /** Key in the stack's table: branch + CSeq method (17.1.3). */
  readonly key: string;
  protected readonly transport: TransactionTransport;
  protected user: ClientTransactionUser;
  protected readonly clock: Clock;
  protected readonly timers: SipTimerConfig;
  protected readonly logger: Logger;
  protected bytes: Buffer;
  private readonly terminatedHook: (() => void) | undefined;

  protected constructor(options: ClientTransactionOptions, bytes: Buffer) {
    this.request = options.request;
    this.branch = options.branch;
    this.method = options.request.method;
    this.key = clientTransactionKey(options.branch, options.request.method);
    this.transport = options.transport;
    this.user = options.user;
    this.clock = options.clock;
    this.timers = options.timers;
    this.logger = options.logger;
    this.bytes = bytes;
    this.terminatedHook = options.onTerminated;
  }

  abstract get state(): TransactionState;
  /** Send the request and start the timers. */
  abstract start(): void;
  abstract receiveResponse(response: ParsedResponse): void;
  /** A transport error for this transaction's destination (ICMP unreachable, TCP refused/reset). */
  abstract onTransportError(error: Error): void;
  /** Stop all timers and terminate without telling the TU (shutdown). */
  abstract dispose(): void;

  /**
   * From Completed on, a client transaction only absorbs retransmissions of its final response (and, for an
   * INVITE, re-sends its ACK): it lets go of its TU, the request and the request's bytes. Otherwise every call
   * stayed in memory, with everything it references, for Timer D (32 s over UDP) after its 487: at 500 calls/s
   * that was some 16,000 finished calls in a worker's heap, promoted to the old generation and marked by every
   * major GC.
   */
  protected letGo(): void {
    this.user = DETACHED_USER;
    this.request = { kind: 'request', method: this.method, uri: '', headers: [], body: undefined };
    this.bytes = NO_BYTES;
  }

  protected notifyTerminated(): void {
    this.terminatedHook?.();
  }

  protected sendRequest(): void {
    this.transport.send(this.bytes);
  }

  protected clearTimer(handle: unknown): undefined {
    if (handle !== undefined) this.clock.clearTimeout(handle);
    return undefined;
  }
}
