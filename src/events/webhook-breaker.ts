import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Keys } from '../store/keys.js';
import { scripts } from '../store/scripts.js';

export interface WebhookBreakerConfig {
  /** Failed deliveries in a row that open an account's breaker; 0: never opens. */
  failures: number;
  /** How long an opened breaker defers the account's deliveries before one probe (ms). */
  coolOffMs: number;
  /** A failed probe doubles the cool-off, up to this (ms). */
  maxCoolOffMs: number;
}

/** What the breaker decided for one delivery (prepareWebhook-4.lua reads it with the rest of the delivery). */
export interface WebhookGate {
  /** The account's webhook URL now; null: removed (the event is dropped). */
  url: string | null;
  /** closed: deliver; probe: deliver, and the outcome closes or re-opens the breaker; open: wait until `until`. */
  state: 'closed' | 'probe' | 'open';
  /** open: ms since epoch before which this account gets no delivery. */
  until: number;
  /** The account has failures on record: a success must reset them (`succeeded`). */
  failing: boolean;
  /** When the gate was read (performance.now()): a failure this process records after it must be reset too. */
  readAt: number;
}

/** How long a closed breaker remembers failures with no success between them. */
const FAILURES_TTL_SECONDS = 24 * 3600;
/** Accounts whose last failure this process remembers (for successes read before it); beyond this, forgotten. */
const MAX_REMEMBERED_FAILURES = 10_000;

/**
 * One circuit breaker per account, shared by every worker process (Redis:
 * Keys.webhookBreaker). `failures` deliveries in a row that fail (timeout,
 * refused, non-2xx ...) open it: the account's deliveries are then deferred,
 * spending no attempt, until the cool-off is over; then one delivery, the
 * probe, goes out: a success closes the breaker, a failure opens it again for
 * twice as long (at most `maxCoolOffMs`). Any successful delivery closes it.
 * Without it, an endpoint that never answers keeps `concurrency` slots busy
 * for `timeoutMs` each, every retry of every event, and the other accounts'
 * webhooks wait behind them.
 */
export class WebhookBreaker {
  /** When this process last recorded a failure of each account (performance.now()), until a success resets it. */
  private readonly lastFailure = new Map<string, number>();

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly config: WebhookBreakerConfig,
    /** How long a probe may take before another delivery may probe instead (its process may have died). */
    readonly probeLeaseMs: number,
    private readonly logger: Logger,
  ) {}

  /** A delivery failed (the receiver's fault, not ours): counted, and the breaker opens or re-opens. */
  async failed(accountId: string, probe: boolean, reason: string, now = Date.now()): Promise<void> {
    if (this.config.failures === 0) return;
    if (this.lastFailure.size >= MAX_REMEMBERED_FAILURES) this.lastFailure.clear();
    this.lastFailure.set(accountId, performance.now());
    const [transition, openUntil, failures, coolOffMs] = (await scripts.tripWebhookBreaker.run(
      this.redis,
      [this.keys.webhookBreaker(accountId), this.keys.webhookBreakersOpen()],
      [accountId, now, this.config.failures, this.config.coolOffMs, this.config.maxCoolOffMs, probe ? 1 : 0, FAILURES_TTL_SECONDS],
    )) as [string, number, number, number];
    if (!transition) return;
    const fields = { account_id: accountId, failures, cool_off_ms: coolOffMs, until: new Date(Number(openUntil)).toISOString(), err: reason };
    if (transition === 'opened') this.logger.warn(fields, 'webhook breaker open: deliveries to this account deferred');
    else this.logger.warn(fields, 'webhook breaker probe failed: open again');
  }

  /**
   * A delivery succeeded: the account's failures are forgotten and an open breaker closes. Only when there is
   * something to forget (no round trip per success otherwise): failures on record when the gate was read
   * (`gate.failing`), or failures this process recorded since, by deliveries running beside this one (a receiver
   * behind a balancer with one bad backend: 500, 200, 500, 200 ... is never "in a row"). One process's success read
   * before another process's failure does not see it; the next delivery read after it does.
   */
  async succeeded(accountId: string, gate: WebhookGate): Promise<void> {
    const failedSince = (this.lastFailure.get(accountId) ?? -Infinity) >= gate.readAt;
    if (!gate.failing && !failedSince) return;
    this.lastFailure.delete(accountId);
    if (await resetWebhookBreaker(this.redis, this.keys, accountId)) {
      this.logger.info({ account_id: accountId }, 'webhook breaker closed: deliveries to this account resume');
    }
  }

  /** The probe sent nothing (event dropped or skipped): another delivery may probe at once. */
  async releaseProbe(accountId: string): Promise<void> {
    await this.redis.hdel(this.keys.webhookBreaker(accountId), 'probe_until');
  }

  /** Accounts whose breaker is open, over the deployment (the `flashverify_webhook_breaker_open` gauge). */
  async openCount(): Promise<number> {
    return this.redis.scard(this.keys.webhookBreakersOpen());
  }
}

/**
 * Closes an account's breaker and forgets its failures (a successful delivery; a new webhook URL). Returns
 * whether it was open.
 */
export async function resetWebhookBreaker(redis: Redis, keys: Keys, accountId: string): Promise<boolean> {
  const res = await redis.multi().del(keys.webhookBreaker(accountId)).srem(keys.webhookBreakersOpen(), accountId).exec();
  return Number(res?.[1]?.[1] ?? 0) > 0;
}
