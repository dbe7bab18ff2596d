import type { Redis } from 'ioredis';

/**
 * ZREMs of one sorted set, coalesced: every member removed in the same turn
 * of the event loop (concurrent requests) leaves in one ZREM with all of
 * them, issued from setImmediate. `remove()` resolves when that ZREM has
 * been answered and rejects with its error; callers on a hot path may ignore
 * it (see VerificationService: the enqueue intent, which the reconciler
 * clears itself when this fails). At most `maxBatch` members per command.
 */
export class BatchedZrem {
  private pending: { member: string; resolve(): void; reject(err: unknown): void }[] = [];
  private scheduled = false;

  constructor(
    private readonly redis: Redis,
    private readonly key: string,
    private readonly maxBatch = 1000,
  ) {}

  remove(member: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ member, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => void this.flush());
      }
    });
  }

  /** Sends what is pending now (also what close paths call). */
  async flush(): Promise<void> {
    this.scheduled = false;
    while (this.pending.length) {
      const batch = this.pending.splice(0, this.maxBatch);
      await this.redis.zrem(this.key, ...batch.map((b) => b.member)).then(
        () => batch.forEach((b) => b.resolve()),
        (err: unknown) => batch.forEach((b) => b.reject(err)),
      );
    }
  }
}
