import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Keys } from '../store/keys.js';
import { waitAtMost } from '../async/time-limit.js';

export interface StreamEntry {
  id: string;
  fields: Record<string, string>;
}

/**
 * What `handle` returns for an entry it has started on but not finished: the entry is acknowledged when `settled`
 * resolves (with others settled by then, in one XACK on `GroupConsumerOptions.ackRedis`), and left pending when it
 * rejects (handled again when reclaimed). The loop reads on meanwhile.
 */
export interface Unsettled {
  settled: Promise<void>;
}

export interface GroupConsumerOptions {
  blockMs?: number;
  /** Entries pending this long on a dead consumer are reclaimed (XAUTOCLAIM); also the reclaim period. */
  claimIdleMs?: number;
  batch?: number;
  /** Where a newly created group starts: "0" (the whole stream) or "$" (only new entries). */
  startId?: '0' | '$';
  /**
   * A shared connection for the acknowledgements of entries `handle` leaves unsettled (the dedicated one is held by
   * XREADGROUP BLOCK, and closed at stop). Required by a consumer whose `handle` returns `Unsettled`.
   */
  ackRedis?: Redis;
  /** At stop, unsettled entries are waited for this long at most; those not settled by then stay pending (reclaimed). */
  settleTimeoutMs?: number;
  /**
   * At most this many unsettled entries in hand: the loop reads no more until some settle (the rest wait in the
   * stream, unread, not pending: no reclaim, nothing held in memory). Unbounded when not given.
   */
  maxUnsettled?: number;
}

/**
 * Creates consumer group `group` on the events stream (and the stream) if it
 * does not exist yet, starting at `startId`; an existing group is left as it
 * is. Every role calls it at boot for every group, so that a group that starts
 * at "$" (webhooks) exists before the first event is written: otherwise an api
 * that takes requests before any worker ever ran would write events that group
 * never sees.
 */
export async function ensureGroup(redis: Redis, keys: Keys, group: string, startId: '0' | '$'): Promise<void> {
  try {
    await redis.xgroup('CREATE', keys.events(), group, startId, 'MKSTREAM');
  } catch (err) {
    if (!(err instanceof Error) || !err.message.includes('BUSYGROUP')) throw err;
  }
}

/**
 * Reads the events stream `<prefix>:events` in one consumer group. An entry
 * is acknowledged only after `handle` resolved for it; an entry whose handling
 * threw stays pending and is retried when reclaimed, as are entries left
 * pending by a consumer that died (XAUTOCLAIM after `claimIdleMs`).
 */
export abstract class GroupConsumer {
  private running = false;
  /** Set by drain(): the loop ends at its first read that finds nothing new. */
  private draining = false;
  private loop: Promise<void> | undefined;
  /** Entries `handle` left unsettled, by id. */
  private readonly unsettled = new Map<string, Promise<void>>();
  /** Settled entries not acknowledged yet: one XACK for those settled in the same turn of the event loop. */
  private settledIds: string[] = [];
  /** The loop, waiting for room under `maxUnsettled` (woken when an entry settles, or at stop). */
  private roomWaiter: (() => void) | undefined;

  constructor(
    /** A dedicated connection: XREADGROUP BLOCK holds it. */
    protected readonly redis: Redis,
    protected readonly keys: Keys,
    private readonly group: string,
    private readonly consumer: string,
    protected readonly logger: Logger,
    private readonly options: GroupConsumerOptions = {},
  ) {}

  /** The connection for work an unsettled entry does after `handle` returned (the dedicated one may be blocked in a read). */
  protected get sharedRedis(): Redis {
    return this.options.ackRedis ?? this.redis;
  }

  /** Applies one entry; throwing leaves it pending for a later retry. `Unsettled`: acknowledged when it settles. */
  protected abstract handle(entry: StreamEntry): Promise<void | Unsettled>;

  async start(): Promise<void> {
    await ensureGroup(this.redis, this.keys, this.group, this.options.startId ?? '0');
    this.running = true;
    this.loop = this.run();
  }

  /**
   * Applies what is already in the stream, then stops: the loop ends at its
   * first read that comes back empty, or after `timeoutMs` (graceful shutdown:
   * the events of the last calls reach their records before the process exits).
   */
  async drain(timeoutMs: number): Promise<void> {
    this.draining = true;
    await waitAtMost(this.loop?.catch(() => undefined), timeoutMs);
    await this.stop();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.wakeLoop();
    // Unblock XREADGROUP BLOCK by closing the dedicated connection.
    this.redis.disconnect();
    await this.loop?.catch(() => undefined);
    await this.settle();
  }

  /** Waits for the unsettled entries (at most `settleTimeoutMs`) and acknowledges those that settled. */
  private async settle(): Promise<void> {
    if (this.unsettled.size) {
      await waitAtMost(Promise.allSettled([...this.unsettled.values()]), this.options.settleTimeoutMs ?? 10_000);
      if (this.unsettled.size) this.logger.warn({ group: this.group, count: this.unsettled.size }, 'events still in hand at stop; left pending for another consumer to reclaim');
    }
    await this.flushAcks();
  }

  private settleLater(id: string, settled: Promise<void>): void {
    const tracked = settled.then(
      () => {
        this.unsettled.delete(id);
        this.wakeLoop();
        if (this.settledIds.push(id) === 1) setImmediate(() => void this.flushAcks());
      },
      (err: Error) => {
        this.unsettled.delete(id);
        this.wakeLoop();
        this.logger.warn({ err: err.message, group: this.group, event_id: id }, 'event not handled; left pending, to be handled again when reclaimed');
      },
    );
    this.unsettled.set(id, tracked);
  }

  /** How many entries the next read may take: `batch`, within what `maxUnsettled` leaves room for. */
  private room(): number {
    const batch = this.options.batch ?? 200;
    const max = this.options.maxUnsettled;
    return max === undefined ? batch : Math.min(batch, max - this.unsettled.size);
  }

  /**
   * Whether the loop may read: under `maxUnsettled`, once a quarter of it (or a batch) is free again, so that a
   * backlog is read in batches, not one entry per settled one.
   */
  private mayRead(): boolean {
    const max = this.options.maxUnsettled;
    if (max === undefined) return true;
    return this.room() >= Math.max(1, Math.min(this.options.batch ?? 200, Math.floor(max / 4)));
  }

  private wakeLoop(): void {
    const wake = this.roomWaiter;
    if (wake === undefined || (this.running && !this.mayRead())) return;
    this.roomWaiter = undefined;
    wake();
  }

  private async flushAcks(): Promise<void> {
    if (!this.settledIds.length) return;
    const ids = this.settledIds;
    this.settledIds = [];
    await this.sharedRedis
      .xack(this.keys.events(), this.group, ...ids)
      .catch((err: Error) => this.logger.warn({ err: err.message, group: this.group, count: ids.length }, 'could not acknowledge handled events; they will be handled again when reclaimed'));
  }

  private async run(): Promise<void> {
    const blockMs = this.options.blockMs ?? 1000;
    const claimEvery = this.options.claimIdleMs ?? 30_000;
    let lastClaim = 0;
    while (this.running) {
      const draining = this.draining;
      try {
        if (Date.now() - lastClaim >= claimEvery) {
          lastClaim = Date.now();
          await this.reclaim(claimEvery);
        }
        if (!this.mayRead()) {
          // In hand up to maxUnsettled: later entries wait in the stream until some of these settle.
          await new Promise<void>((resolve) => (this.roomWaiter = resolve));
          continue;
        }
        const res = (await this.redis.xreadgroup(
          'GROUP',
          this.group,
          this.consumer,
          'COUNT',
          this.room(),
          'BLOCK',
          draining ? 50 : blockMs,
          'STREAMS',
          this.keys.events(),
          '>',
        )) as [string, [string, string[]][]][] | null;
        if (!res || res.every(([, entries]) => entries.length === 0)) {
          if (draining) return;
          continue;
        }
        for (const [, entries] of res) await this.handleAll(entries.map(toEntry));
      } catch (err) {
        if (!this.running) return;
        const message = (err as Error).message;
        if (message.includes('NOGROUP')) {
          // The stream or the group is gone: Redis restarted without its data (no AOF/RDB), a FLUSHALL, or an operator
          // deleted the group. Without the group this consumer would never read again (statuses, webhooks and workflow
          // steps would stop for good): create it again, at the group's own start.
          this.logger.warn({ group: this.group }, 'events consumer group missing (Redis lost its data?); creating it again');
          await ensureGroup(this.redis, this.keys, this.group, this.options.startId ?? '0').catch((e: Error) =>
            this.logger.warn({ err: e.message, group: this.group }, 'could not create the events consumer group; retrying'),
          );
        } else {
          this.logger.warn({ err: message }, 'events consumer error; retrying');
        }
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
        this.logger.info({ count: entries.length, group: this.group }, 'reclaimed pending events');
        await this.handleAll(entries);
      }
    } while (cursor !== '0-0');
  }

  /**
   * Handles a read batch in order and acknowledges what was handled with one
   * XACK (one command per batch instead of one per entry). An entry whose
   * handling threw, and every later one, stays pending as before. A crash
   * before the XACK leaves the batch's handled entries pending: they are
   * handled again when reclaimed, which the handlers must (and do) tolerate,
   * as for a crash between `handle` and its own XACK.
   */
  private async handleAll(entries: StreamEntry[]): Promise<void> {
    const done: string[] = [];
    try {
      for (const entry of entries) {
        // Reclaimed while still in hand here (it outlasted claimIdleMs): its own handling acknowledges it.
        if (this.unsettled.has(entry.id)) continue;
        const unsettled = await this.handle(entry);
        if (unsettled) this.settleLater(entry.id, unsettled.settled);
        else done.push(entry.id);
      }
    } finally {
      if (done.length) await this.redis.xack(this.keys.events(), this.group, ...done);
    }
  }
}

function toEntry([id, flat]: [string, string[]]): StreamEntry {
  const fields: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
  return { id, fields };
}
