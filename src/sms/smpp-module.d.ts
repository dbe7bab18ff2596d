/**
 * Types for the parts of `smpp` (node-smpp 0.5.1, untyped CommonJS) this
 * project uses: the PDU codec (src/sms/pdu.ts) and, in the test SMSC
 * (smsc-test/), the server. Field values of a decoded PDU depend on the
 * command, so a PDU is a record of unknown values read through the narrow
 * helpers in src/sms/pdu.ts; nothing here is `any`.
 */
declare module 'smpp' {
  import type { EventEmitter } from 'node:events';
  import type { Server as NetServer, Socket } from 'node:net';

  /** A PDU as node-smpp builds and decodes it: header fields plus one property per parameter / TLV. */
  export class PDU {
    /** Encodes `command` with `options` (parameters, TLVs, command_status, sequence_number). */
    constructor(command: string, options?: Record<string, unknown>);
    /** Decodes one whole PDU; throws on a malformed body. */
    constructor(buffer: Buffer);
    command: string;
    command_id: number;
    command_length: number;
    command_status: number;
    sequence_number: number;
    [field: string]: unknown;
    isResponse(): boolean;
    /** The response PDU (generic_nack for an unknown command id). */
    response(options?: Record<string, unknown>): PDU;
    toBuffer(): Buffer;
    /** Returns false when the buffer is shorter than its command_length. */
    static fromBuffer(buffer: Buffer): PDU | false;
    static maxLength: number;
  }

  /** node-smpp's session: socket + PDU reader; only the test SMSC uses it (through the server). */
  export class Session extends EventEmitter {
    socket: Socket;
    send(pdu: PDU, responseCallback?: (pdu: PDU) => void, sendCallback?: (pdu: PDU) => void): boolean;
    close(callback?: () => void): void;
    destroy(callback?: () => void): void;
    pause(): void;
    resume(): void;
  }

  export class Server extends NetServer {
    sessions: Session[];
  }

  export function createServer(options: Record<string, unknown>, listener?: (session: Session) => void): Server;
  export function createServer(listener?: (session: Session) => void): Server;

  interface CommandDef {
    id: number;
    command: string;
    params?: Record<string, { type: unknown; filter?: unknown; default?: unknown }>;
  }

  /** GSM 03.38 default alphabet codec (unpacked septets); `shift` 0 = no national table. */
  export const gsmCoder: {
    encode(text: string, shift: number): Buffer;
    decode(septets: Buffer, shift: number): string;
  };

  /** command_status names → values (ESME_ROK, ESME_RTHROTTLED, ...). */
  export const errors: Record<string, number>;
  export const commands: Record<string, CommandDef>;
  export const commandsById: Record<number, CommandDef>;
  export const consts: Record<string, Record<string, number>>;

  const smpp: {
    PDU: typeof PDU;
    Session: typeof Session;
    Server: typeof Server;
    createServer: typeof createServer;
    errors: typeof errors;
    commands: typeof commands;
    commandsById: typeof commandsById;
    consts: typeof consts;
    gsmCoder: typeof gsmCoder;
  };
  export default smpp;
}
