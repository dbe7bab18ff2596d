/**
 * INVITE client transaction (RFC 3261 17.1.1).
 *
 *                      |INVITE from TU
 *    Timer A fires     |INVITE sent
 *    Reset A,          V                      Timer B fires
 *    INVITE sent +-----------+                or Transport Err.
 *      +---------|           |---------------+inform TU
 *      |         |  Calling  |               |
 *      +-------->|           |-------------->|
 *                +-----------+ 2xx           |
 *                   |  |       2xx to TU     |
 *                   |  |1xx                  |
 *   300-699 +-------+  |1xx to TU            |
 *  ACK sent |          |                     |
 * resp. to TU|  1xx    V                     |
 *           |  1xx to TU  -----------+       |
 *           |  +---------|           |       |
 *           |  |         |Proceeding |------>|
 *           |  +-------->|           | 2xx   |
 *           |            +-----------+ 2xx to TU
 *           |   300-699     |                |
 *           |   ACK sent,   |                |
 *           |   resp. to TU |                |
 *           |               |                |
 *           |               V                |
 *           |         +-----------+          |
 *           +-------->|           |          |
 *   300-699           | Completed |          |
 *   ACK sent          |           |          |
 *                     +-----------+          |
 *                       |  Timer D fires     |
 *                       V  -                 |
 *                     +-----------+          |
 *                     | Terminated|<---------+
 *                     +-----------+
 *
 * A 2xx terminates the transaction (RFC 3261; the RFC 6026 Accepted state is
 * not used): 2xx retransmissions reach the UAC core directly, which re-ACKs.
 */
import { TIMER_D_UNRELIABLE_MS, type TimerHandle } from '../clock.js';
import { getHeaders, hdr, serializeMessage, type ParsedResponse, type SipHeader, type SipRequest } from '../message.js';
import { isUnreadableStream } from '../transport.js';
import { ClientTransaction, TransactionState, type ClientTransactionOptions } from './transaction.js';

export class InviteClientTransaction extends ClientTransaction {
  private _state: TransactionState | undefined;
  private A: TimerHandle | undefined;
  private B: TimerHandle | undefined;
  private D: TimerHandle | undefined;
  private timerAInterval: number;
  private ackBytes: Buffer | undefined;

  constructor(options: ClientTransactionOptions) {
    if (options.request.method !== 'INVITE') throw new TypeError('InviteClientTransaction needs an INVITE');
    super(options, serializeMessage(options.request));
    this.timerAInterval = options.timers.t1Ms;
  }

  get state(): TransactionState {
    return this._state ?? TransactionState.Calling;
  }

  start(): void {
    if (this._state !== undefined) return;
    this.stateTransition(TransactionState.Calling);
    this.sendRequest();
  }

  receiveResponse(response: ParsedResponse): void {
    const status = response.status;
    switch (this._state) {
      case TransactionState.Calling:
      case TransactionState.Proceeding:
        if (status < 200) {
          this.stateTransition(TransactionState.Proceeding);
          this.user.receiveResponse(response);
        } else if (status < 300) {
          // 17.1.1.2: 2xx goes to the TU, which sends the ACK; transaction terminates.
          this.stateTransition(TransactionState.Terminated);
          this.user.receiveResponse(response);
        } else {
          this.ackBytes = serializeMessage(this.buildAck(response));
          this.stateTransition(TransactionState.Completed);
          this.sendAck();
          this.user.receiveResponse(response);
          // Only the ACK is needed for the retransmissions Timer D absorbs.
          this.letGo();
        }
        return;
      case TransactionState.Completed:
        // 17.1.1.2: retransmissions of the final response re-send the ACK, not passed to the TU.
        if (status >= 300) this.sendAck();
        return;
      default:
        return;
    }
  }

  onTransportError(error: Error): void {
    switch (this._state) {
      case TransactionState.Calling:
        if (isUnreadableStream(error) && this.user.onUnreadableResponse !== undefined) {
          // The far end has the INVITE and answered something unreadable (most likely its 1xx): as in Proceeding,
          // nothing is retransmitted and its final response may come on a connection it opens (18.2.2).
          this.logger.debug({ err: error.message, branch: this.branch }, 'unreadable answer to the INVITE in Calling');
          this.stateTransition(TransactionState.Proceeding);
          this.user.onUnreadableResponse(error);
          return;
        }
        this.logger.debug({ err: error.message, branch: this.branch }, 'INVITE transport error in Calling');
        this.stateTransition(TransactionState.Terminated);
        this.user.onTransportError(error);
        return;
      case TransactionState.Proceeding:
        // 17.1.1.2 has no transport-error transition out of Proceeding: nothing is outstanding (no retransmissions
        // once a 1xx arrived). Over TCP a lost connection does not end the INVITE either: the UAS sends its final
        // response on a connection it opens (18.2.2), and the TU's CANCEL goes on a new one (9.1, 18.1.1).
        this.logger.debug({ err: error.message, branch: this.branch }, 'transport error in Proceeding; INVITE still pending');
        return;
      case TransactionState.Completed:
        // Only ACK retransmissions are at stake.
        this.stateTransition(TransactionState.Terminated);
        return;
      default:
        return;
    }
  }

  dispose(): void {
    if (this._state === TransactionState.Terminated) return;
    this.stateTransition(TransactionState.Terminated);
  }

  /** The ACK for a non-2xx final response, 17.1.1.3. */
  private buildAck(response: ParsedResponse): SipRequest {
    const req = this.request;
    const headers: SipHeader[] = [];
    let topViaCopied = false;
    for (const h of req.headers) {
      switch (h.key) {
        case 'via':
          // Only the top Via of the original request.
          if (!topViaCopied) headers.push(h);
          topViaCopied = true;
          break;
        case 'from':
        case 'call-id':
        case 'route':
        case 'max-forwards':
          headers.push(h);
          break;
        default:
          break;
      }
    }
    const toValue = getHeaders(response, 'to')[0];
    headers.push(hdr('To', toValue ?? ''));
    headers.push(hdr('CSeq', `${cseqNumber(req)} ACK`));
    return { kind: 'request', method: 'ACK', uri: req.uri, headers, body: undefined };
  }

  private sendAck(): void {
    if (this.ackBytes !== undefined) this.transport.send(this.ackBytes);
  }

  /** The one place timers are started and stopped. */
  private stateTransition(newState: TransactionState): void {
    const from = this._state;
    const invalid = (): never => {
      throw new Error(`Invalid INVITE client transaction transition ${String(from)} -> ${newState}`);
    };
    switch (newState) {
      case TransactionState.Calling:
        if (from !== undefined) invalid();
        break;
      case TransactionState.Proceeding:
        if (from !== TransactionState.Calling && from !== TransactionState.Proceeding) invalid();
        break;
      case TransactionState.Completed:
        if (from !== TransactionState.Calling && from !== TransactionState.Proceeding) invalid();
        break;
      case TransactionState.Terminated:
        if (from === TransactionState.Terminated) invalid();
        break;
      default:
        invalid();
    }

    // Leaving Calling: Timers A and B no longer apply (B only fires in Calling).
    if (newState !== TransactionState.Calling) {
      this.A = this.clearTimer(this.A);
      this.B = this.clearTimer(this.B);
    }
    if (newState === TransactionState.Terminated) this.D = this.clearTimer(this.D);

    this._state = newState;
    if (from !== newState) this.logger.trace({ branch: this.branch, from, to: newState }, 'ICT state');

    switch (newState) {
      case TransactionState.Calling:
        if (!this.transport.reliable) this.A = this.clock.setTimeout(() => this.timerA(), this.timerAInterval);
        this.B = this.clock.setTimeout(() => this.timerB(), 64 * this.timers.t1Ms);
        break;
      case TransactionState.Completed:
        if (this.transport.reliable) {
          // Timer D is zero for reliable transports: terminate now (no zero-delay timer).
          this.stateTransition(TransactionState.Terminated);
        } else {
          this.D = this.clock.setTimeout(() => this.timerD(), TIMER_D_UNRELIABLE_MS);
        }
        break;
      case TransactionState.Terminated:
        this.notifyTerminated();
        break;
      default:
        break;
    }
  }

  /**
   * Timer A: INVITE request retransmit interval, for UDP only (17.1.1.2).
   * Starts at T1 and doubles after every retransmission, without cap.
   */
  private timerA(): void {
    this.A = undefined;
    if (this._state !== TransactionState.Calling) return;
    this.sendRequest();
    this.timerAInterval *= 2;
    this.A = this.clock.setTimeout(() => this.timerA(), this.timerAInterval);
  }

  /** Timer B: INVITE transaction timeout, 64*T1 (17.1.1.2). Only meaningful in Calling. */
  private timerB(): void {
    this.B = undefined;
    if (this._state !== TransactionState.Calling) return;
    this.stateTransition(TransactionState.Terminated);
    this.user.onRequestTimeout();
  }

  /** Timer D: wait time for response retransmits, >32 s for UDP, 0 for TCP (17.1.1.2). */
  private timerD(): void {
    this.D = undefined;
    if (this._state === TransactionState.Completed) this.stateTransition(TransactionState.Terminated);
  }
}

function cseqNumber(req: SipRequest): number {
  for (const h of req.headers) {
    if (h.key === 'cseq') return parseInt(h.value, 10);
  }
  return 0;
}
