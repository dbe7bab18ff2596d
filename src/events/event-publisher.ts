import type { Redis } from 'ioredis';
import type { Keys } from '../store/keys.js';
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

/** Writes delivery events to `<prefix>:events` (design.md: one entry per event). */
export class EventPublisher {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly maxLen: number,
  ) {}

  /** The stream's key: for a Lua script that writes an event (with `streamArgs`) atomically with its record. */
  get stream(): string {
    return this.keys.events();
  }

  async publish(e: DeliveryEvent): Promise<string> {
    const id = await this.redis.xadd(this.stream, ...(this.streamArgs(e) as ['MAXLEN', '~', number, '*', ...string[]]));
    return id ?? '';
  }

  /** XADD arguments after the stream key for `e`, for a Lua script that writes the event atomically with its record (settleSms-3, recordAttemptEvent-2). */
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
