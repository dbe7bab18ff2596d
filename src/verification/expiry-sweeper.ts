import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Keys } from '../store/keys.js';
import { PeriodicPass } from './periodic-pass.js';
import { scripts } from '../store/scripts.js';
import { chargeDay } from './types.js';

export interface ExpirySweeperOptions {
  /** Time between sweeps. */
  intervalMs: number;
  /** Approximate cap of the events stream (XADD MAXLEN ~). */
  eventsMaxLen: number;
  /** Requests expired per Redis round trip batch. */
  batch?: number;
}

/**
 * Expires `sent` / `delivered` requests when their time is up even if nobody
 * polls them, so `verification.expired` reaches webhooks on time. The create
 * script files every request in a sorted set by expires_at; each sweep takes
 * the due ones and expires each atomically (expireVerification-7.lua), refunding an attempt that never left. Any
 * number of worker processes may sweep at once: the script is idempotent, so
 * exactly one of them emits the event.
 */
export class ExpirySweeper {
  private readonly loop: PeriodicPass;

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly options: ExpirySweeperOptions,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.loop = new PeriodicPass(() => this.sweep(), options.intervalMs, logger, 'expiry sweep failed; retrying');
  }

  start(): void {
    this.loop.start();
  }

  async stop(): Promise<void> {
    await this.loop.stop();
  }

  /** One sweep; returns how many requests it expired. */
  async sweep(): Promise<number> {
    const batch = this.options.batch ?? 500;
    let expired = 0;
    for (;;) {
      const now = this.now();
      const due = await this.redis.zrangebyscore(this.keys.expiries(), '-inf', now, 'LIMIT', 0, batch);
      if (due.length === 0) return expired;
      let progressed = 0;
      // What a refund of the current attempt needs (expireVerification-7): its account and the day it was charged (chargedAt).
      const records = await this.pipelined(due.map((id) => ['hmget', this.keys.verification(id), 'account_id', 'wf_step', 'last_send_at', 'created_at']));
      const steps = await this.pipelined(
        due.flatMap((id, i) => {
          const step = records[i]?.[1];
          return step == null ? [] : [['hget', this.keys.verification(id), `att${step}_started_at`]];
        }),
      );
      let stepRead = 0;
      for (const [i, requestId] of due.entries()) {
        const [accountId, wfStep, lastSendAt, createdAt] = records[i] ?? [];
        const h: Record<string, string | undefined> = { last_send_at: lastSendAt ?? undefined, created_at: createdAt ?? undefined };
        if (wfStep != null) {
          h.wf_step = wfStep;
          h[`att${wfStep}_started_at`] = steps[stepRead++]?.[0] ?? undefined;
        }
        const r = await runExpire(this.redis, this.keys, requestId, accountId ?? '', chargeDay(h), now, this.options.eventsMaxLen);
        if (r === 'expired') {
          expired++;
          this.logger.info({ request_id: requestId }, 'verification expired');
        }
        if (r !== 'pending') progressed++;
      }
      if (due.length < batch || progressed === 0) return expired;
    }
  }

  /** One round trip for a batch of reads; each command's result (null on error). */
  private async pipelined(commands: string[][]): Promise<(string | null)[][]> {
    if (commands.length === 0) return [];
    const results = (await this.redis.pipeline(commands).exec()) ?? [];
    return results.map(([err, value]) => (err ? [] : ((Array.isArray(value) ? value : [value]) as (string | null)[])));
  }
}

/** expireVerification-7 for one request (its account, and the day its current attempt was charged); its verdict. */
async function runExpire(redis: Redis, keys: Keys, requestId: string, accountId: string, day: string, now: number, eventsMaxLen: number): Promise<string> {
  const [r] = (await scripts.expireVerification.run(
    redis,
    [
      keys.verification(requestId),
      keys.expiries(),
      keys.events(),
      keys.account(accountId),
      keys.usage(accountId, day),
      keys.conversion(day),
      keys.webhookOrder(requestId),
    ],
    [requestId, now, eventsMaxLen],
  )) as [string, number?];
  return r;
}

/**
 * Expires one request whose time is up now, as the sweeper would: a delivery job that finds it past its expiry before
 * the sweeper came ends it the same way (`expired`, the attempt that never left refunded), not another. Its verdict
 * (`expired`, `pending`: not due, or already final).
 */
export async function expireRequest(redis: Redis, keys: Keys, requestId: string, now: number, eventsMaxLen: number): Promise<string> {
  const key = keys.verification(requestId);
  const [accountId, wfStep, lastSendAt, createdAt] = await redis.hmget(key, 'account_id', 'wf_step', 'last_send_at', 'created_at');
  const h: Record<string, string | undefined> = { last_send_at: lastSendAt ?? undefined, created_at: createdAt ?? undefined };
  if (wfStep != null) {
    h.wf_step = wfStep;
    h[`att${wfStep}_started_at`] = (await redis.hget(key, `att${wfStep}_started_at`)) ?? undefined;
  }
  return runExpire(redis, keys, requestId, accountId ?? '', chargeDay(h), now, eventsMaxLen);
}
