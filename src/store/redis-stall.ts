import type { Logger } from 'pino';
import type { Redis } from './redis.js';

/**
 * Whether Redis answers at all, from a connection of its own: a PING every `intervalMs`; one not answered within
 * `stallMs` (a Redis stopped, swapping, or loading its data after a restart: connections open, nothing answered)
 * makes `stalled` true until a PING is answered again. The api answers new requests 503 meanwhile, before sending
 * Redis anything: a command given up on by a timeout would still run once Redis goes on (a request created, charged
 * and dialled after its client was told 503), and one sent to a hung Redis waits for as long as it hangs.
 */
export class RedisStallWatch {
  private timer: NodeJS.Timeout | undefined;
  private sentAt: number | undefined;
  private stalledSince: number | undefined;

  constructor(
    private readonly redis: Redis,
    private readonly options: { stallMs: number; logger: Logger },
  ) {}

  get stalled(): boolean {
    return this.stalledSince !== undefined;
  }

  start(): void {
    // Often enough to see a stall soon after stallMs, at most twice a second.
    const intervalMs = Math.max(100, Math.min(500, Math.floor(this.options.stallMs / 4)));
    this.timer = setInterval(() => this.tick(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private tick(now = Date.now()): void {
    if (this.sentAt !== undefined) {
      if (now - this.sentAt >= this.options.stallMs) this.enter(now - this.sentAt, 'no answer to PING');
      return;
    }
    const sentAt = (this.sentAt = now);
    this.redis.ping().then(
      () => {
        if (this.sentAt === sentAt) this.sentAt = undefined;
        this.leave();
      },
      (err: Error) => {
        if (this.sentAt === sentAt) this.sentAt = undefined;
        // Refused (loading, a connection lost ...): not answering requests either.
        this.enter(Date.now() - sentAt, err.message);
      },
    );
  }

  private enter(waitedMs: number, why: string): void {
    if (this.stalledSince !== undefined) return;
    this.stalledSince = Date.now();
    this.options.logger.warn({ waited_ms: waitedMs, err: why }, 'redis is not answering; new API requests get 503 until it does');
  }

  private leave(): void {
    if (this.stalledSince === undefined) return;
    this.options.logger.info({ stalled_ms: Date.now() - this.stalledSince }, 'redis answers again; API requests taken');
    this.stalledSince = undefined;
  }
}
