/**
 * Non-INVITE client transaction (RFC 3261 17.1.2), used for CANCEL and BYE.
 *
 *                                    |Request from TU
 *                                    |send request
 *                Timer E             V
 *                send request  +-----------+
 *                    +---------|           |-------------------+
 *                    |         |  Trying   |  Timer F          |
 *                    +-------->|           |  or Transport Err.|
 *                              +-----------+  inform TU        |
 *                 200-699         |  |                         |
 *                 resp. to TU     |  |1xx                      |
 *                 +---------------+  |resp. to TU              |
 *                 |                  |                         |
 *                 |   Timer E        V       Timer F           |
 *                 |   send req +-----------+ or Transport Err. |
 *                 |  +---------|           | inform TU         |
 *                 |  |         |Proceeding |------------------>|
 *                 |  +-------->|           |-----+             |
 *                 |            +-----------+     |1xx          |
 *                 |              |      ^        |resp to TU   |
 *                 | 200-699      |      +--------+             |
 *                 | resp. to TU  |                             |
 *                 |              |                             |
 *                 |              V                             |
 *                 |            +-----------+                   |
 *                 |            |           |                   |
 *                 +----------->| Completed |                   |
 *                              |           |                   |
 *                              +-----------+                   |
 *                                ^   |                         |
 *                                |   | Timer K                 |
 *                                +---+ -                       |
 *                                    |                         |
 *                                    V                         |
 *              NOTE:           +-----------+                   |
 *                              |           |                   |
 *          transitions         | Terminated|<------------------+
 *          labeled with        |           |
 *          the event           +-----------+
 */
import type { TimerHandle } from '../clock.js';
import { serializeMessage, type ParsedResponse } from '../message.js';
import { ClientTransaction, TransactionState, type ClientTransactionOptions } from './transaction.js';

export class NonInviteClientTransaction extends ClientTransaction {
  private _state: TransactionState | undefined;
  private E: TimerHandle | undefined;
  private F: TimerHandle | undefined;
  private K: TimerHandle | undefined;
  private timerEInterval: number;

  constructor(options: ClientTransactionOptions) {
    const m = options.request.method;
    if (m === 'INVITE' || m === 'ACK') throw new TypeError(`NonInviteClientTransaction cannot carry ${m}`);
    super(options, serializeMessage(options.request));
    this.timerEInterval = options.timers.t1Ms;
  }

  get state(): TransactionState {
    return this._state ?? TransactionState.Trying;
  }

  start(): void {
    if (this._state !== undefined) return;
    this.stateTransition(TransactionState.Trying);
    this.sendRequest();
  }

  receiveResponse(response: ParsedResponse): void {
    switch (this._state) {
      case TransactionState.Trying:
      case TransactionState.Proceeding:
        if (response.status < 200) {
          this.stateTransition(TransactionState.Proceeding);
        } else {
          this.stateTransition(TransactionState.Completed);
        }
        this.user.receiveResponse(response);
        // Completed (Timer K, 5 s over UDP) only absorbs retransmissions of the final response.
        if (response.status >= 200) this.letGo();
        return;
      default:
        // Completed: retransmissions of the final response are absorbed.
        return;
    }
  }

  onTransportError(error: Error): void {
    if (this._state !== TransactionState.Trying && this._state !== TransactionState.Proceeding) return;
    this.logger.debug({ err: error.message, branch: this.branch, method: this.method }, 'transport error');
    this.stateTransition(TransactionState.Terminated);
    this.user.onTransportError(error);
  }

  dispose(): void {
    if (this._state === TransactionState.Terminated) return;
    this.stateTransition(TransactionState.Terminated);
  }

  /** The one place timers are started and stopped. */
  private stateTransition(newState: TransactionState): void {
    const from = this._state;
    const invalid = (): never => {
      throw new Error(`Invalid non-INVITE client transaction transition ${String(from)} -> ${newState}`);
    };
    switch (newState) {
      case TransactionState.Trying:
        if (from !== undefined) invalid();
        break;
      case TransactionState.Proceeding:
        if (from !== TransactionState.Trying && from !== TransactionState.Proceeding) invalid();
        break;
      case TransactionState.Completed:
        if (from !== TransactionState.Trying && from !== TransactionState.Proceeding) invalid();
        break;
      case TransactionState.Terminated:
        if (from === TransactionState.Terminated) invalid();
        break;
      default:
        invalid();
    }

    // Leaving Trying/Proceeding: no more retransmissions, no timeout.
    if (newState === TransactionState.Completed || newState === TransactionState.Terminated) {
      this.E = this.clearTimer(this.E);
      this.F = this.clearTimer(this.F);
    }
    if (newState === TransactionState.Terminated) this.K = this.clearTimer(this.K);

    this._state = newState;
    if (from !== newState) this.logger.trace({ branch: this.branch, method: this.method, from, to: newState }, 'NICT state');

    switch (newState) {
      case TransactionState.Trying:
        if (!this.transport.reliable) this.E = this.clock.setTimeout(() => this.timerE(), this.timerEInterval);
        this.F = this.clock.setTimeout(() => this.timerF(), 64 * this.timers.t1Ms);
        break;
      case TransactionState.Completed:
        if (this.transport.reliable) {
          // Timer K is zero for reliable transports: terminate now.
          this.stateTransition(TransactionState.Terminated);
        } else {
          this.K = this.clock.setTimeout(() => this.timerK(), this.timers.t4Ms);
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
   * Timer E: non-INVITE request retransmit interval, UDP only (17.1.2.2).
   * In Trying it doubles up to T2; in Proceeding it is T2.
   */
  private timerE(): void {
    this.E = undefined;
    if (this._state === TransactionState.Trying) {
      this.timerEInterval = Math.min(2 * this.timerEInterval, this.timers.t2Ms);
    } else if (this._state === TransactionState.Proceeding) {
      this.timerEInterval = this.timers.t2Ms;
    } else {
      return;
    }
    this.sendRequest();
    this.E = this.clock.setTimeout(() => this.timerE(), this.timerEInterval);
  }

  /** Timer F: non-INVITE transaction timeout, 64*T1 (17.1.2.2). */
  private timerF(): void {
    this.F = undefined;
    if (this._state !== TransactionState.Trying && this._state !== TransactionState.Proceeding) return;
    this.stateTransition(TransactionState.Terminated);
    this.user.onRequestTimeout();
  }

  /** Timer K: wait time for response retransmits, T4 for UDP, 0 for TCP (17.1.2.2). */
  private timerK(): void {
    this.K = undefined;
    if (this._state === TransactionState.Completed) this.stateTransition(TransactionState.Terminated);
  }
}
