import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Keys } from '../store/keys.js';
import { scripts } from '../store/scripts.js';

export interface StreamEntry {
  id: string;
  fields: Record<string, string>;
}

/**
 * Reads the events stream in a consumer group and applies each event to its
 * verification record (status, history, failure reason, refund). An entry is
 * acknowledged only after it was applied; entries left pending by a consumer
 * that died are reclaimed (XAUTOCLAIM) after `claimIdleMs`.
 */
export class StatusConsumer {
  private running = false;
  private loop: Promise<void> | undefined;

  constructor(
    /** A dedicated connection: XREADGROUP BLOCK holds it. */
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly group: string,
    private readonly consumer: string,
    private readonly logger: Logger,
    private readonly options: { blockMs?: number; claimIdleMs?: number; batch?: number } = {},
  ) {}

  async start(): Promise<void> {
    try {
      await this.redis.xgroup('CREATE', this.keys.events(), this.group, '0', 'MKSTREAM');
    } catch (err) {
      if (!(err instanceof Error) || !err.message.includes('BUSYGROUP')) throw err;
    }
    this.running = true;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.running = false;
    // Unblock XREADGROUP BLOCK by closing the dedicated connection.
    this.redis.disconnect();
    await this.loop?.catch(() => undefined);
  }

  private async run(): Promise<void> {
    const blockMs = this.options.blockMs ?? 1000;
    const claimEvery = this.options.claimIdleMs ?? 30_000;
    let lastClaim = 0;
    while (this.running) {
      try {
        if (Date.now() - lastClaim >= claimEvery) {
          lastClaim = Date.now();
          await this.reclaim(claimEvery);
        }
        const res = (await this.redis.xreadgroup(
          'GROUP',
          this.group,
          this.consumer,
          'COUNT',
          this.options.batch ?? 200,
          'BLOCK',
          blockMs,
          'STREAMS',
          this.keys.events(),
          '>',
        )) as [string, [string, string[]][]][] | null;
        if (!res) continue;
        for (const [, entries] of res) await this.handle(entries.map(toEntry));
      } catch (err) {
        if (!this.running) return;
        this.logger.warn({ err: (err as Error).message }, 'events consumer error; retrying');
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  private async reclaim(idleMs: number): Promise<void> {
    let cursor = '0-0';
    do {
      const res = (await this.redis.xautoclaim(
        this.keys.events(),
        this.group,
        this.consumer,
        idleMs,
        cursor,
        'COUNT',
        200,
      )) as [string, ([string, string[]] | null)[]];
      cursor = res[0];
      const entries = res[1].filter((e): e is [string, string[]] => e !== null).map(toEntry);
      if (entries.length) {
        this.logger.info({ count: entries.length }, 'reclaimed pending events');
        await this.handle(entries);
      }
    } while (cursor !== '0-0');
  }

  private async handle(entries: StreamEntry[]): Promise<void> {
    for (const { id, fields } of entries) {
      const status = fields.status;
      if ((status === 'delivered' || status === 'failed') && fields.request_id) {
        let detail: Record<string, unknown> = {};
        try {
          detail = JSON.parse(fields.detail ?? '{}') as Record<string, unknown>;
        } catch {
          this.logger.warn({ event_id: id }, 'event with malformed detail');
        }
        const patch: string[] = [];
        for (const k of ['reason', 'sip_status', 'outcome', 'call_id', 'trunk', 'range']) {
          const v = detail[k];
          if (v !== undefined) patch.push(k === 'reason' ? 'failure_reason' : k, String(v).replace(/\n/g, ' '));
        }
        await scripts.applyEvent.run(
          this.redis,
          [this.keys.verification(fields.request_id), this.keys.account(fields.account_id ?? '')],
          [status, fields.timestamp ?? String(Date.now()), patch.join('\n'), detail.refund === true ? '1' : '0'],
        );
      }
      await this.redis.xack(this.keys.events(), this.group, id);
    }
  }
}

function toEntry([id, flat]: [string, string[]]): StreamEntry {
  const fields: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
  return { id, fields };
}
