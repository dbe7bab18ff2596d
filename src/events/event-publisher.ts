import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Keys } from '../store/keys.js';
import { scripts } from '../store/scripts.js';
import type { Method, Status } from '../verification/types.js';

export interface DeliveryEvent {
  request_id: string;
  account_id: string;
  method: Method;
  status: Extract<Status, 'delivered' | 'failed'>;
  /** Outcome details: SIP status, reason, call id ... Never the code, never the CLI. */
  detail: Record<string, string | number | boolean>;
  /** Milliseconds since epoch; default now. */
  timestamp?: number;
  /** Workflow requests: the step this event is about, and how many steps there are (stream fields `step`, `steps`). */
  step?: number;
  steps?: number;
}

/**
 * Writes delivery events to `<prefix>:events` (design.md: one entry per event), each filed in the same step in
 * its request's webhook order set (recordAttemptEvent-3, lua/includes/writeEvent.lua), so that its webhook and
 * the later ones of the request go out in stream order even when another consumer handles a later event first.
 */
export class EventPublisher {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    /** Approximate cap of the events stream (XADD MAXLEN ~). */
    readonly maxLen: number,
  ) {}

  /** The stream's key: for a Lua script that writes an event (with `streamArgs`) atomically with its record. */
  get stream(): string {
    return this.keys.events();
  }

  /** The webhook order set of a request: for a Lua script that writes an event (writeEvent.lua). */
  orderKey(requestId: string): string {
    return this.keys.webhookOrder(requestId);
  }

  /** Writes `e`; its stream id. */
  async publish(e: DeliveryEvent): Promise<string> {
    return (await this.write(e)).id;
  }

  /**
   * Writes `e`, then `fields` of the delivery attempt it is about (a flash call's `delivered` with its `rang_at`),
   * in one script: the fields only while the attempt is still the request's current one (recordAttemptFields-1).
   * `fieldsWritten` false: none given, the record is gone, or the request moved on (the event is written all the same).
   */
  async write(e: DeliveryEvent, fields: Record<string, string> = {}): Promise<{ id: string; fieldsWritten: boolean }> {
    const flat = Object.entries(fields).flat();
    const [written, id] = (await scripts.recordAttemptEvent.run(
      this.redis,
      [this.keys.verification(e.request_id), this.stream, this.orderKey(e.request_id)],
      // The token makes the write once only, even when the script runs again (recordAttemptEvent-3).
      [randomBytes(6).toString('base64url'), e.step === undefined ? '' : String(e.step), flat.length, ...flat, ...this.streamArgs(e)],
    )) as [number, string];
    return { id, fieldsWritten: written === 1 };
  }

  /** XADD arguments after the stream key for `e`, for a Lua script that writes the event atomically with its record (settleSms-4, recordAttemptEvent-3). */
  streamArgs(e: DeliveryEvent): (string | number)[] {
    return [
      'MAXLEN',
      '~',
      this.maxLen,
      '*',
      'event',
      `verification.${e.status}`,
      'request_id',
      e.request_id,
      'account_id',
      e.account_id,
      'method',
      e.method,
      'status',
      e.status,
      'timestamp',
      String(e.timestamp ?? Date.now()),
      ...(e.step !== undefined ? ['step', String(e.step), 'steps', String(e.steps ?? e.step + 1)] : []),
      'detail',
      JSON.stringify(e.detail),
    ];
  }
}
