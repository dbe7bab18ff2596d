import { isIP, connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type SecureContext } from 'node:tls';
import type { Logger } from 'pino';
import type { SmscConfig } from '../config/schema.js';
import { TpsWindow } from './tps-window.js';
import { normaliseMessageId } from './message-id.js';
import {
  CommandStatus,
  GENERIC_NACK_ID,
  PduFramer,
  commandStatusName,
  encodeHeader,
  encodePdu,
  isKnownCommand,
  pduString,
  type Frame,
  type SmppPdu,
} from './pdu.js';
import { SmppError } from './smpp-error.js';
import { encodeShortMessage } from './text.js';
import type { AnsweredOutcome, SubmitOutcome, SubmitRequest } from './types.js';

/**
 * One SMPP bind: a bind_transceiver connection, or a bind_transmitter +
 * bind_receiver pair (bindMode transmitter_receiver). It owns the window of
 * submit_sm in flight, the per-PDU response timer, the TPS window (tps-window.ts), the
 * enquire_link watchdog and the jittered reconnect. node-smpp is used only as
 * the PDU codec (src/sms/pdu.ts): requests in flight are tracked here by
 * sequence number, so a dead connection settles every one of them at once.
 */

/** An SMSC entry with its URL resolved (see `resolveSmscs` in gateway.ts). */
export interface SmscSettings extends Omit<SmscConfig, 'url' | 'systemId' | 'password' | 'tls'> {
  host: string;
  port: number;
  tls: boolean;
  /** smpps://: the TLS connection's own settings (sms.smscs[].tls, files read at start). */
  tlsOptions?: { secureContext: SecureContext; rejectUnauthorized: boolean; servername?: string };
  systemId: string;
  password: string;
}

export interface SmppSessionDelegate {
  /**
   * A deliver_sm or a data_sm (SMPP 3.4 §4.6, §4.7: a receipt may come as either) arrived on this bind. Resolve
   * once it is handled (answered ESME_ROK); reject to answer ESME_RX_T_APPN so the SMSC sends it again.
   */
  onMessage(pdu: SmppPdu, session: SmppSession): Promise<void>;
  /** The bind went up or down, a window slot was freed, or a cool-down began. */
  onAvailabilityChange(session: SmppSession): void;
  /**
   * A submit that was reported `unconfirmed` (timeout) got its submit_sm_resp after all (same connection), read as
   * an in-time one: accepted, or refused (retry / failed).
   */
  onLateResponse?(request: SubmitRequest, outcome: AnsweredOutcome): void;
}

export interface SmppSessionOptions {
  smsc: SmscSettings;
  /** Bind name for logs, metrics and `SubmitOutcome.bind`, e.g. "default#0". */
  name: string;
  logger: Logger;
  delegate: SmppSessionDelegate;
  /** Monotonic clock in ms (injectable for tests). */
  now?: () => number;
  random?: () => number;
  /** The SMSC account's rate over every bind of every worker process (sms.smscs[].accountTps), taken after the bind's own. */
  accountRate?: { take(): Promise<void> } | undefined;
}

type BindType = 'transceiver' | 'transmitter' | 'receiver';

/** Connection states; `stateTransition` below is the only writer. */
export type ConnectionState = 'idle' | 'connecting' | 'binding' | 'bound' | 'unbinding' | 'down' | 'closed';

type RequestResult = { kind: 'response'; pdu: SmppPdu } | { kind: 'timeout' } | { kind: 'lost' };

interface PendingRequest {
  command: string;
  timer: NodeJS.Timeout;
  settle: (result: RequestResult) => void;
  /**
   * Called with the response if it arrives after the timeout, on the same connection; with undefined when none
   * will any more (the connection went, or the entry was let go).
   */
  onLate?: (pdu: SmppPdu | undefined) => void;
}

const BIND_COMMAND: Record<BindType, string> = {
  transceiver: 'bind_transceiver',
  transmitter: 'bind_transmitter',
  receiver: 'bind_receiver',
};

/** SMPP 3.4 interface_version. */
const INTERFACE_VERSION = 0x34;
const RESPONSE_BIT = 0x80000000;
/** Bound on waiting for the peer to close after unbind_resp / on stop. */
/** A bind that held this long before it went resets the reconnect back-off (reconnectMinMs again). */
const STABLE_BIND_MS = 10_000;
const CLOSE_WAIT_MS = 1_000;
/** Bound on waiting for unbind_resp when a bind that stopped answering is recycled (also at most responseTimeoutMs). */
const RECYCLE_UNBIND_WAIT_MS = 5_000;

class SmppConnection {
  state: ConnectionState = 'idle';
  private socket: Socket | undefined;
  /** The socket corked for the current turn (see `send`). */
  private corked: Socket | undefined;
  private framer = new PduFramer();
  private sequence = 0;
  private readonly pending = new Map<number, PendingRequest>();
  /**
   * Requests that timed out but whose response may still come on this
   * connection (a slow SMSC): a late submit_sm_resp still tells us the SMSC
   * accepted the message. Cleared when the connection goes.
   */
  private readonly late = new Map<number, (pdu: SmppPdu | undefined) => void>();
  /** Bumped on every new socket and on loss: events of an older socket are ignored. */
  private generation = 0;
  private reconnectAttempt = 0;
  /** When the last bind succeeded (this.now()). */
  private boundAt = -Infinity;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private connectTimer: NodeJS.Timeout | undefined;
  private enquireTimer: NodeJS.Timeout | undefined;
  private enquireOutstanding = false;
  private lastReceived = 0;
  private stopping = false;

  constructor(
    private readonly bindType: BindType,
    private readonly smsc: SmscSettings,
    private readonly log: Logger,
    private readonly now: () => number,
    private readonly random: () => number,
    private readonly events: {
      onBound(): void;
      onDown(): void;
      onMessage(pdu: SmppPdu): Promise<void>;
    },
  ) {}

  get isBound(): boolean {
    return this.state === 'bound';
  }

  /** The SMSC said this session is not bound (ESME_RINVBNDSTS to a request): unbind and bind again. */
  rebind(reason: string): void {
    this.recycle(reason, this.generation);
  }

  start(): void {
    this.stopping = false;
    this.connect();
  }

  /** Sends a request PDU and waits for its response, bounded by `timeoutMs`. */
  request(
    command: string,
    fields: Record<string, unknown>,
    timeoutMs: number,
    onLate?: (pdu: SmppPdu | undefined) => void,
  ): { sequence: number; result: Promise<RequestResult> } {
    const socket = this.socket;
    if (!socket || socket.destroyed) return { sequence: 0, result: Promise.resolve({ kind: 'lost' }) };
    const sequence = this.nextSequence();
    let buffer: Buffer;
    try {
      buffer = encodePdu(command, { ...fields, sequence_number: sequence });
    } catch (err) {
      // An unencodable PDU is a programming error; treat it as never sent.
      this.log.error({ err, command }, 'could not encode PDU');
      return { sequence, result: Promise.resolve({ kind: 'lost' }) };
    }
    const result = new Promise<RequestResult>((settle) => {
      const timer = setTimeout(() => this.requestTimedOut(sequence), timeoutMs);
      this.pending.set(sequence, { command, timer, settle, ...(onLate ? { onLate } : {}) });
    });
    this.send(socket, buffer);
    return { sequence, result };
  }

  /** Unbinds (waiting for unbind_resp, bounded) and closes; no reconnect afterwards. */
  async stop(timeoutMs: number): Promise<void> {
    this.stopping = true;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    if (this.state === 'bound') await this.unbind(Math.max(1, Math.min(timeoutMs, this.smsc.responseTimeoutMs)));
    this.lost('stopped');
    this.stateTransition('closed');
  }

  /**
   * SMPP 3.4 §4.2: unbind, wait for unbind_resp (bounded by `waitMs`), then close. Requests still in flight are
   * answered meanwhile if the SMSC does; new submits see the bind down (`unbinding`).
   */
  private async unbind(waitMs: number): Promise<void> {
    this.stateTransition('unbinding');
    const { sequence, result } = this.request('unbind', {}, waitMs);
    const r = await result;
    this.log.info({ seq: sequence, result: r.kind === 'response' ? commandStatusName(r.pdu.command_status) : r.kind }, 'unbind done');
    // No unbind_resp: the peer is not listening; waiting for its close would only delay the reconnect.
    if (r.kind === 'response' || this.stopping) await this.closeSocket(CLOSE_WAIT_MS);
  }

  /**
   * Gives up on a bound connection that stopped answering (enquire_link unanswered, nothing heard, a submit_sm
   * never answered) and reconnects. It is unbound first, as §4.2 expects of a session that ends (the SMSC then
   * knows the window is gone and can release what it holds for it), waiting for unbind_resp at most
   * responseTimeoutMs (capped at RECYCLE_UNBIND_WAIT_MS); a socket already dead is dropped at once.
   */
  private recycle(reason: string, generation: number): void {
    if (generation !== this.generation || this.state !== 'bound') return;
    const socket = this.socket;
    if (!socket || socket.destroyed || !socket.writable) {
      this.lost(reason, generation);
      return;
    }
    this.log.warn({ reason }, 'recycling the bind: unbind, then reconnect');
    void this.unbind(Math.min(this.smsc.responseTimeoutMs, RECYCLE_UNBIND_WAIT_MS)).then(() => this.lost(reason, generation));
  }

  // --- connection life cycle -------------------------------------------------

  private connect(): void {
    if (this.stopping) return;
    this.generation += 1;
    const generation = this.generation;
    this.framer = new PduFramer();
    this.stateTransition('connecting');
    const options = { host: this.smsc.host, port: this.smsc.port };
    const sni = this.smsc.tlsOptions?.servername ?? (isIP(this.smsc.host) ? undefined : this.smsc.host);
    const socket = this.smsc.tls
      ? tlsConnect({ ...options, ...this.smsc.tlsOptions, ...(sni !== undefined ? { servername: sni } : {}) })
      : netConnect(options);
    this.socket = socket;
    socket.setNoDelay(true);
    this.connectTimer = setTimeout(() => this.lost('connect timeout', generation), this.smsc.responseTimeoutMs);
    socket.once(this.smsc.tls ? 'secureConnect' : 'connect', () => {
      clearTimeout(this.connectTimer);
      if (generation === this.generation) void this.bind(generation);
    });
    socket.on('data', (chunk: Buffer) => this.onData(generation, chunk));
    // The error that closes the socket (refused, reset, a TLS certificate not trusted) names the `connection down`.
    let failure: string | undefined;
    socket.on('error', (err) => {
      failure = err.message;
      this.log.debug({ err: err.message }, 'socket error');
    });
    socket.on('close', () => this.lost(failure === undefined ? 'connection closed' : `connection closed: ${failure}`, generation));
  }

  private async bind(generation: number): Promise<void> {
    this.stateTransition('binding');
    const { sequence, result } = this.request(
      BIND_COMMAND[this.bindType],
      {
        system_id: this.smsc.systemId,
        password: this.smsc.password,
        system_type: this.smsc.systemType,
        interface_version: INTERFACE_VERSION,
        addr_ton: 0,
        addr_npi: 0,
        address_range: '',
      },
      this.smsc.responseTimeoutMs,
    );
    const r = await result;
    if (generation !== this.generation) return;
    if (r.kind === 'response' && r.pdu.command_status === CommandStatus.ESME_ROK && r.pdu.command !== 'generic_nack') {
      // The back-off starts again only once the bind has held (lost()): an SMSC that accepts the bind and then
      // unbinds or closes at once (a bind limit checked after the bind, an account disabled) is not rebound every
      // reconnectMinMs for ever.
      this.boundAt = this.now();
      this.lastReceived = this.now();
      this.stateTransition('bound');
      this.log.info({ seq: sequence, smsc_system_id: pduString(r.pdu, 'system_id') }, 'bound');
      this.events.onBound();
      return;
    }
    if (r.kind === 'response') {
      const err = new SmppError(r.pdu.command_status, BIND_COMMAND[this.bindType]);
      this.log.warn({ seq: sequence, command_status: err.statusName }, 'bind refused');
      this.lost('bind refused', generation);
    } else {
      this.log.warn({ seq: sequence }, r.kind === 'timeout' ? 'bind timed out' : 'connection lost while binding');
      this.lost(r.kind === 'timeout' ? 'bind timeout' : 'connection lost', generation);
    }
  }

  /**
   * The connection is gone (or being given up): settle every request in
   * flight at once, stop the timers, and reconnect after a back-off unless
   * stopping. Idempotent per socket generation.
   */
  private lost(reason: string, generation = this.generation): void {
    if (generation !== this.generation) return;
    if (this.state === 'down' || this.state === 'closed' || this.state === 'idle') return;
    const wasBound = this.state === 'bound' || this.state === 'unbinding';
    if (wasBound && this.now() - this.boundAt >= STABLE_BIND_MS) this.reconnectAttempt = 0;
    this.generation += 1;
    clearTimeout(this.connectTimer);
    this.stopEnquireLink();
    // What this turn wrote (a generic_nack before giving up on the stream) leaves before the socket goes.
    if (this.socket && this.corked === this.socket) this.socket.uncork();
    this.corked = undefined;
    this.socket?.destroy();
    this.socket = undefined;
    const pending = [...this.pending.values()];
    this.pending.clear();
    const late = [...this.late.values()];
    this.late.clear();
    for (const l of late) l(undefined);
    for (const p of pending) {
      clearTimeout(p.timer);
      p.settle({ kind: 'lost' });
    }
    this.stateTransition('down');
    this.log[this.stopping ? 'debug' : 'warn']({ reason, settled: pending.length }, 'connection down');
    if (wasBound) this.events.onDown();
    if (!this.stopping) this.scheduleReconnect();
  }

  /** Jittered exponential back-off: reconnectMinMs doubling up to reconnectMaxMs, each delay drawn in [d/2, d]. */
  private scheduleReconnect(): void {
    const base = Math.min(this.smsc.reconnectMaxMs, this.smsc.reconnectMinMs * 2 ** Math.min(this.reconnectAttempt, 30));
    const delay = Math.round(base / 2 + (this.random() * base) / 2);
    this.reconnectAttempt += 1;
    this.log.debug({ delay_ms: delay, attempt: this.reconnectAttempt }, 'reconnect scheduled');
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      this.connect();
    }, delay);
  }

  private closeSocket(waitMs: number): Promise<void> {
    const socket = this.socket;
    if (!socket || socket.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        socket.destroy();
        resolve();
      }, waitMs);
      socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.end();
    });
  }

  private stateTransition(next: ConnectionState): void {
    if (this.state === next) return;
    const previous = this.state;
    this.state = next;
    if (next === 'bound') this.startEnquireLink();
    this.log.debug({ from: previous, to: next }, 'bind state');
  }

  // --- enquire_link watchdog (SMPP 3.4 §4.11) ---------------------------------

  private startEnquireLink(): void {
    this.stopEnquireLink();
    this.enquireTimer = setInterval(() => this.enquireLinkTick(), this.smsc.enquireLinkMs);
  }

  private stopEnquireLink(): void {
    clearInterval(this.enquireTimer);
    this.enquireTimer = undefined;
    this.enquireOutstanding = false;
  }

  /** Sends enquire_link; no enquire_link_resp within responseTimeoutMs, or nothing heard for a whole period plus that, means the link is dead. */
  private enquireLinkTick(): void {
    if (this.state !== 'bound') return;
    const generation = this.generation;
    if (this.now() - this.lastReceived > this.smsc.enquireLinkMs + this.smsc.responseTimeoutMs) {
      this.recycle('no traffic from SMSC', generation);
      return;
    }
    if (this.enquireOutstanding) return;
    this.enquireOutstanding = true;
    const { sequence, result } = this.request('enquire_link', {}, this.smsc.responseTimeoutMs);
    void result.then((r) => {
      if (generation !== this.generation) return;
      this.enquireOutstanding = false;
      if (r.kind === 'timeout') {
        this.log.warn({ seq: sequence }, 'enquire_link unanswered');
        this.recycle('enquire_link timeout', generation);
      } else if (r.kind === 'response' && r.pdu.command_status === CommandStatus.ESME_RINVBNDSTS) {
        // §5.1.3 "Incorrect BIND Status": the SMSC no longer holds this session as bound (it answers, so the
        // watchdog would never see it): bind again.
        this.log.warn({ seq: sequence, command: r.pdu.command }, 'SMSC says this session is not bound (ESME_RINVBNDSTS)');
        this.recycle('ESME_RINVBNDSTS', generation);
      }
    });
  }

  // --- incoming PDUs ------------------------------------------------------------

  private onData(generation: number, chunk: Buffer): void {
    if (generation !== this.generation) return;
    this.lastReceived = this.now();
    let frames: Frame[];
    try {
      frames = this.framer.push(chunk);
    } catch (err) {
      // The stream cannot be resynchronised: nack without a sequence number (§4.3.1) and start over.
      this.log.warn({ err: (err as Error).message }, 'unframeable data from SMSC');
      this.write(encodeHeader(GENERIC_NACK_ID, CommandStatus.ESME_RINVCMDLEN, 0));
      this.lost('invalid command_length', generation);
      return;
    }
    for (const frame of frames) {
      if (generation !== this.generation) return;
      this.onFrame(frame);
    }
  }

  private onFrame(frame: Frame): void {
    if (frame.kind === 'undecodable') {
      this.log.warn(
        { command_id: `0x${frame.commandId.toString(16)}`, seq: frame.sequence, length: frame.length, err: frame.error },
        'undecodable PDU from SMSC',
      );
      // Never answer a response; an undecodable response leaves its request to time out.
      if ((frame.commandId & RESPONSE_BIT) === 0) {
        this.write(encodeHeader(GENERIC_NACK_ID, CommandStatus.ESME_RINVCMDLEN, frame.sequence));
      }
      return;
    }
    const pdu = frame.pdu;
    if (pdu.command === 'unknown') {
      this.log.warn({ command_id: `0x${pdu.command_id.toString(16)}`, seq: pdu.sequence_number }, 'unknown command id from SMSC');
      if ((pdu.command_id & RESPONSE_BIT) === 0) {
        this.write(encodeHeader(GENERIC_NACK_ID, CommandStatus.ESME_RINVCMDID, pdu.sequence_number));
      }
      return;
    }
    if (pdu.isResponse()) {
      this.onResponse(pdu);
      return;
    }
    this.onRequest(pdu);
  }

  private onResponse(pdu: SmppPdu): void {
    const pending = this.pending.get(pdu.sequence_number);
    // A response must be the one to its request (or a generic_nack): another command's response carrying the
    // sequence number (an SMSC's bug) says nothing of the request, which keeps waiting for its own.
    if (pending && pdu.command !== `${pending.command}_resp` && pdu.command !== 'generic_nack') {
      this.log.warn({ command: pdu.command, seq: pdu.sequence_number, expected: `${pending.command}_resp` }, 'response of another command for a request in flight; ignored');
      return;
    }
    if (!pending) {
      const late = this.late.get(pdu.sequence_number);
      if (late) {
        this.late.delete(pdu.sequence_number);
        this.log.info({ command: pdu.command, seq: pdu.sequence_number }, 'late response to a timed-out request');
        late(pdu);
        return;
      }
      this.log.debug({ command: pdu.command, seq: pdu.sequence_number }, 'response without a request in flight (late or unknown)');
      return;
    }
    this.pending.delete(pdu.sequence_number);
    clearTimeout(pending.timer);
    pending.settle({ kind: 'response', pdu });
  }

  private onRequest(pdu: SmppPdu): void {
    const seq = pdu.sequence_number;
    switch (pdu.command) {
      case 'enquire_link':
        this.write(encodePdu('enquire_link_resp', { sequence_number: seq }));
        return;
      case 'deliver_sm':
      case 'data_sm':
        this.onMessage(pdu);
        return;
      case 'unbind':
        // SMPP 3.4 §4.2: answer, then the SMSC closes; reconnect after a back-off.
        this.log.warn({ seq }, 'SMSC unbound');
        this.write(encodePdu('unbind_resp', { sequence_number: seq }));
        if (this.state === 'bound') this.stateTransition('unbinding');
        void this.closeSocket(CLOSE_WAIT_MS).then(() => this.lost('unbound by SMSC'));
        return;
      case 'alert_notification':
        // §4.12: no response PDU exists for alert_notification.
        return;
      default: {
        this.log.warn({ command: pdu.command, seq }, 'unsupported request from SMSC');
        const resp = `${pdu.command}_resp`;
        const id = isKnownCommand(resp) ? (pdu.command_id | RESPONSE_BIT) >>> 0 : GENERIC_NACK_ID;
        this.write(encodeHeader(id, CommandStatus.ESME_RINVCMDID, seq));
      }
    }
  }

  /**
   * deliver_sm_resp / data_sm_resp only once the message is handled; ESME_RX_T_APPN when handling fails, so the
   * SMSC sends it again. Every one is answered (§4.6.2, §4.7.2), whatever it carries.
   */
  private onMessage(pdu: SmppPdu): void {
    const generation = this.generation;
    const seq = pdu.sequence_number;
    const command = pdu.command;
    let handled: Promise<void>;
    try {
      handled = this.events.onMessage(pdu);
    } catch (err) {
      handled = Promise.reject(err);
    }
    void handled.then(
      () => CommandStatus.ESME_ROK,
      (err: unknown) => {
        this.log.warn({ command, seq, err: err instanceof Error ? err.message : String(err) }, 'message from SMSC not handled; answering ESME_RX_T_APPN');
        return CommandStatus.ESME_RX_T_APPN;
      },
    ).then((status) => {
      if (generation !== this.generation) {
        this.log.debug({ command, seq }, 'connection gone before the response; the SMSC will send it again');
        return;
      }
      this.write(encodePdu(`${command}_resp`, { sequence_number: seq, command_status: status, message_id: '' }));
    });
  }

  private requestTimedOut(sequence: number): void {
    const pending = this.pending.get(sequence);
    if (!pending) return;
    this.pending.delete(sequence);
    this.log.debug({ command: pending.command, seq: sequence }, 'response timeout');
    if (pending.onLate) {
      // Bounded: the map is emptied with the connection, and the sequence space is 2^31.
      if (this.late.size >= 10_000) {
        const [oldest, evicted] = this.late.entries().next().value!;
        this.late.delete(oldest);
        evicted(undefined);
      }
      this.late.set(sequence, pending.onLate);
    }
    pending.settle({ kind: 'timeout' });
    if (pending.onLate) this.watchUnanswered(sequence);
  }

  /**
   * Watchdog for an SMSC that stops answering submit_sm while still answering
   * enquire_link: a submit still unanswered twice responseTimeoutMs after its
   * timeout (three times after it left: a generous margin for a late
   * submit_sm_resp, which still resolves it) means the bind is stuck; it is
   * recycled (unbound, then reconnected), so new submits go to binds that answer.
   */
  private watchUnanswered(sequence: number): void {
    const generation = this.generation;
    setTimeout(() => {
      if (generation !== this.generation || !this.late.has(sequence)) return;
      this.log.warn({ seq: sequence }, 'submit_sm never answered');
      this.recycle('submit_sm never answered', generation);
    }, 2 * this.smsc.responseTimeoutMs).unref();
  }

  private write(buffer: Buffer): void {
    const socket = this.socket;
    if (socket && !socket.destroyed) this.send(socket, buffer);
  }

  /**
   * PDUs written in the same turn of the event loop (the submit_sm of several
   * jobs, the deliver_sm_resp of a batch of receipts) leave in one write
   * system call: the socket is corked at the first and uncorked once the
   * turn's callbacks and promise reactions have run. Order is unchanged.
   */
  private send(socket: Socket, buffer: Buffer): void {
    if (this.corked !== socket) {
      this.corked = socket;
      socket.cork();
      process.nextTick(() => {
        if (this.corked === socket) this.corked = undefined;
        socket.uncork();
      });
    }
    socket.write(buffer);
  }

  private nextSequence(): number {
    // SMPP 3.4 §3.2: 0x00000001 to 0x7FFFFFFF.
    this.sequence = this.sequence >= 0x7fffffff ? 1 : this.sequence + 1;
    return this.sequence;
  }
}

export class SmppSession {
  readonly name: string;
  readonly smsc: SmscSettings;
  private readonly tx: SmppConnection;
  private readonly rx: SmppConnection | undefined;
  private readonly bucket: TpsWindow;
  private readonly log: Logger;
  private readonly now: () => number;
  private inFlightCount = 0;
  private accepting = false;
  /** ESME_RTHROTTLED / ESME_RMSGQFUL back-off: no new submits on this bind before this time. */
  private coolUntil = 0;
  private throttleStreak = 0;

  constructor(private readonly options: SmppSessionOptions) {
    this.name = options.name;
    this.smsc = options.smsc;
    this.now = options.now ?? (() => performance.now());
    const random = options.random ?? Math.random;
    this.log = options.logger.child({ smsc: options.smsc.name, bind: options.name });
    this.bucket = new TpsWindow(options.smsc.tps, this.now);
    const events = {
      onBound: () => options.delegate.onAvailabilityChange(this),
      onDown: () => options.delegate.onAvailabilityChange(this),
      onMessage: (pdu: SmppPdu) => options.delegate.onMessage(pdu, this),
    };
    if (options.smsc.bindMode === 'transmitter_receiver') {
      this.tx = new SmppConnection('transmitter', options.smsc, this.log.child({ bind_type: 'tx' }), this.now, random, events);
      this.rx = new SmppConnection('receiver', options.smsc, this.log.child({ bind_type: 'rx' }), this.now, random, events);
    } else {
      this.tx = new SmppConnection('transceiver', options.smsc, this.log, this.now, random, events);
    }
  }

  /** Bound for submits (the transmitter side is up). */
  get isUp(): boolean {
    return this.tx.isBound;
  }

  /** Bound for receipts: the receiver of a transmitter + receiver pair, else the transceiver. */
  get isReceiving(): boolean {
    return (this.rx ?? this.tx).isBound;
  }

  get inFlight(): number {
    return this.inFlightCount;
  }

  get window(): number {
    return this.smsc.window;
  }

  /** Up, accepting, not cooling down after a throttle, and with a free window slot. */
  hasRoom(): boolean {
    return this.accepting && this.isUp && this.inFlightCount < this.smsc.window && !this.isCoolingDown();
  }

  isCoolingDown(): boolean {
    return this.now() < this.coolUntil;
  }

  /** Time left of the ESME_RTHROTTLED / ESME_RMSGQFUL back-off (0 when none). */
  coolDownRemainingMs(): number {
    return Math.max(0, this.coolUntil - this.now());
  }

  start(): void {
    this.accepting = true;
    this.tx.start();
    this.rx?.start();
  }

  /** Stops taking submits, waits for those in flight (bounded by `timeoutMs`), unbinds and closes. */
  async stop(timeoutMs: number): Promise<void> {
    this.accepting = false;
    const deadline = this.now() + timeoutMs;
    while (this.inFlightCount > 0 && this.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const left = Math.max(100, deadline - this.now());
    await Promise.all([this.tx.stop(left), this.rx?.stop(left)]);
  }

  /**
   * Takes a window slot now, synchronously, so choosing a bind and taking its
   * slot cannot be split by another submit: the window is never exceeded.
   * Hand the slot to `submitReserved` (which always gives it back).
   */
  reserve(): boolean {
    if (!this.hasRoom()) return false;
    this.inFlightCount += 1;
    return true;
  }

  /** Takes a slot and sends one submit_sm on this bind; `no_bind` when there is no room. Never throws. */
  async submit(request: SubmitRequest): Promise<SubmitOutcome> {
    if (!this.reserve()) return { kind: 'retry', reason: 'no_bind', smsc: this.smsc.name };
    return this.submitReserved(request);
  }

  /**
   * Sends one submit_sm in a slot taken with `reserve()`, and frees the slot: when it is answered, or, one that timed
   * out, when its late answer comes or its connection goes (the SMSC still holds it unanswered: it counts in the
   * window until then). Throws only what the request's beforeSend throws.
   */
  async submitReserved(request: SubmitRequest): Promise<SubmitOutcome> {
    const smsc = this.smsc.name;
    let kept = false;
    let freed = false;
    const slot = {
      keep: (): void => void (kept = true),
      free: (): void => {
        if (freed) return;
        freed = true;
        this.inFlightCount -= 1;
        this.options.delegate.onAvailabilityChange(this);
      },
    };
    try {
      return await this.submitInSlot(request, slot);
    } catch (err) {
      // The request's own check failed (Redis): the caller's to handle, as if it had failed before the submit.
      if (err instanceof BeforeSendError) throw err.cause;
      // Only an encoding bug can land here (text.ts checks texts fit); don't lose the job over it.
      request.logger.error({ smsc, bind: this.name, err: err instanceof Error ? err.message : String(err) }, 'submit failed locally');
      return { kind: 'failed', reason: 'encoding', commandStatus: CommandStatus.ESME_RSYSERR, statusName: 'ESME_RSYSERR', smsc };
    } finally {
      if (!kept) slot.free();
    }
  }

  private async submitInSlot(request: SubmitRequest, slot: { keep(): void; free(): void }): Promise<SubmitOutcome> {
    const smsc = this.smsc.name;
    const encoded = encodeShortMessage(request.message, { gsm7DataCoding: this.smsc.gsm7DataCoding, gsm7Packed: this.smsc.gsm7Packed });
    await this.bucket.take();
    if (this.options.accountRate) await this.options.accountRate.take();
    if (request.beforeSend !== undefined) {
      const wanted = await request.beforeSend().catch((err: unknown) => {
        throw new BeforeSendError(err);
      });
      if (!wanted) return { kind: 'withdrawn', smsc };
    }
    if (!this.tx.isBound) return { kind: 'retry', reason: 'connection_lost', smsc };
    const { sequence, result } = this.tx.request(
      'submit_sm',
      {
        service_type: '',
        source_addr_ton: request.from.ton,
        source_addr_npi: request.from.npi,
        source_addr: request.from.addr,
        dest_addr_ton: 1,
        dest_addr_npi: 1,
        destination_addr: request.to.replace(/^\+/, ''),
        esm_class: 0,
        registered_delivery: request.requestReceipt ? 1 : 0,
        ...(request.validForSeconds !== undefined ? { validity_period: relativeValidity(request.validForSeconds) } : {}),
        data_coding: encoded.dataCoding,
        short_message: encoded.shortMessage,
      },
      this.smsc.responseTimeoutMs,
      (late) => {
        // Answered at last, or never will be on this connection: its window slot is free.
        slot.free();
        if (late === undefined) return;
        if (late.command !== 'submit_sm_resp' && late.command !== 'generic_nack') return;
        const lateLog = request.logger.child({ smsc, bind: this.name, seq: sequence, late: true });
        lateLog.warn({ command_status: commandStatusName(late.command_status) }, 'submit_sm answered after its response timeout');
        // A late answer counts as an in-time one would: the SMSC accepted the message, or refused it (nothing sent).
        const outcome = this.answered(late, lateLog);
        // Accepted without an id: nothing to map it by; it stays unconfirmed (a receipt by number, or its deadline).
        if (outcome.kind === 'accepted' && outcome.messageId === '') return;
        this.options.delegate.onLateResponse?.(request, outcome);
      },
    );
    // Never log the text: it carries the code.
    const log = request.logger.child({ smsc, bind: this.name, seq: sequence });
    log.debug({ data_coding: encoded.dataCoding, octets: encoded.shortMessage.length }, 'submit_sm sent');
    const r = await result;
    // Sequence 0: nothing was written (the connection went just now).
    if (r.kind === 'lost' && sequence === 0) return { kind: 'retry', reason: 'connection_lost', smsc };
    if (r.kind === 'timeout') {
      // The SMSC holds it unanswered: its slot stays taken until the late answer or the connection's end (onLate).
      slot.keep();
      log.warn({ timeout_ms: this.smsc.responseTimeoutMs }, 'submit_sm_resp timed out; unconfirmed');
      return { kind: 'unconfirmed', reason: 'timeout', smsc, bind: this.name };
    }
    if (r.kind === 'lost') {
      log.warn('connection lost with submit_sm in flight; unconfirmed');
      return { kind: 'unconfirmed', reason: 'connection_lost', smsc, bind: this.name };
    }
    const outcome = this.answered(r.pdu, log);
    // Taken, but without an id nothing maps its receipt: it waits as an unanswered one does, for a receipt matched by
    // SMSC and number (or its deadline), never under an empty id shared by every such submit.
    if (outcome.kind === 'accepted' && outcome.messageId === '') return { kind: 'unconfirmed', reason: 'no_message_id', smsc, bind: this.name };
    return outcome;
  }

  /** What the submit_sm_resp (or generic_nack) to a submit says, in time or late; throttles start the back-off. */
  private answered(pdu: SmppPdu, log: Logger): AnsweredOutcome {
    const smsc = this.smsc.name;
    const status = pdu.command_status;
    if (status === CommandStatus.ESME_ROK && pdu.command === 'submit_sm_resp') {
      this.throttleStreak = 0;
      const rawMessageId = pduString(pdu, 'message_id') ?? '';
      if (rawMessageId === '') log.warn('submit_sm_resp ESME_ROK without message_id: its receipt cannot be matched');
      const messageId = rawMessageId === '' ? '' : normaliseMessageId(rawMessageId, this.smsc.messageIdFormat, 'resp');
      log.info({ message_id: messageId }, 'submit_sm accepted');
      return { kind: 'accepted', rawMessageId, messageId, smsc, bind: this.name };
    }
    const statusName = commandStatusName(status);
    if (status === CommandStatus.ESME_RTHROTTLED || status === CommandStatus.ESME_RMSGQFUL) {
      const coolMs = this.coolDown();
      log.warn({ command_status: statusName, cool_down_ms: coolMs }, 'SMSC asks to slow down');
      return {
        kind: 'retry',
        reason: status === CommandStatus.ESME_RTHROTTLED ? 'throttled' : 'queue_full',
        commandStatus: status,
        smsc,
      };
    }
    if (status === CommandStatus.ESME_RINVBNDSTS) {
      // §5.1.3 "Incorrect BIND Status": a fault of the session, not of the message (nothing was accepted): the bind
      // is made again, and the submit goes on another bind (as one whose connection was lost before it left).
      log.warn({ command_status: statusName }, 'SMSC says this session is not bound; submit_sm to be sent on another bind, this one bound again');
      this.tx.rebind('ESME_RINVBNDSTS to submit_sm');
      return { kind: 'retry', reason: 'connection_lost', commandStatus: status, smsc };
    }
    if (status === CommandStatus.ESME_RSYSERR || status === CommandStatus.ESME_RX_T_APPN) {
      // A fault of the SMSC's side, not of this message ("System Error", "Temporary App Error"): nothing was
      // accepted, so it is tried again later like a throttle (as Kannel does), not failed for good.
      log.warn({ command_status: statusName }, 'SMSC reports a temporary error; submit_sm to be retried');
      return { kind: 'retry', reason: 'temporary_error', commandStatus: status, smsc };
    }
    log.warn({ command_status: statusName, command: pdu.command }, 'submit_sm refused');
    return { kind: 'failed', reason: 'smsc_rejected', commandStatus: status, statusName, smsc };
  }

  /**
   * Back-off after ESME_RTHROTTLED / ESME_RMSGQFUL: reconnectMinMs doubling per throttling episode, capped at
   * reconnectMaxMs. The submits in flight when the SMSC began to refuse come back refused together, during the
   * back-off they started: one episode, one step (a window of 10 refused at once was 9 doublings, 30 s parked).
   */
  private coolDown(): number {
    const now = this.now();
    if (now < this.coolUntil) return this.coolUntil - now;
    const ms = Math.min(this.smsc.reconnectMaxMs, this.smsc.reconnectMinMs * 2 ** Math.min(this.throttleStreak, 30));
    this.throttleStreak += 1;
    this.coolUntil = now + ms;
    this.options.delegate.onAvailabilityChange(this);
    return ms;
  }
}

/**
 * SMPP 3.4 §7.1.1 relative time "YYMMDDhhmmsstnnR" for `seconds` from now (at least 1 s; days up to 99, which
 * no code lives anywhere near).
 */
export function relativeValidity(seconds: number): string {
  let s = Math.max(1, Math.min(Math.ceil(seconds), 99 * 86_400));
  const days = Math.floor(s / 86_400);
  s -= days * 86_400;
  const p2 = (n: number): string => String(n).padStart(2, '0');
  return `0000${p2(days)}${p2(Math.floor(s / 3600))}${p2(Math.floor((s % 3600) / 60))}${p2(s % 60)}000R`;
}

/** What a request's beforeSend threw, carried past submitReserved's catch-all for encoding bugs. */
class BeforeSendError extends Error {
  constructor(override readonly cause: unknown) {
    super('beforeSend failed');
  }
}
