import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Keys } from '../store/keys.js';
import { PeriodicPass } from './periodic-pass.js';
import { scripts } from '../store/scripts.js';

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
 * the due ones and expires each atomically (expireVerification-3.lua). Any
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
      for (const requestId of due) {
        const r = await scripts.expireVerification.run(
          this.redis,
          [this.keys.verification(requestId), this.keys.expiries(), this.keys.events()],
          [requestId, now, this.options.eventsMaxLen],
        );
        if (r === 'expired') {
          expired++;
          this.logger.info({ request_id: requestId }, 'verification expired');
        }
        if (r !== 'pending') progressed++;
      }
      if (due.length < batch || progressed === 0) return expired;
    }
  }
}
