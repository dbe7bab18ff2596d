import type { TrunkConfig } from '../config/schema.js';
import { TokenBucket } from './token-bucket.js';

/**
 * Chooses the trunk of a call and paces calls to each trunk's CPS. One pacer
 * per worker process, shared by every channel, so flash and voice calls
 * together stay within a trunk's `cps`.
 */
export class TrunkPacer {
  private readonly buckets = new Map<string, TokenBucket>();

  constructor(private readonly trunks: readonly TrunkConfig[]) {
    if (trunks.length === 0) throw new Error('TrunkPacer needs at least one trunk');
  }

  /** The trunk for the next call. Failover between trunks lands with the resilience work; today the first carries all calls. */
  pick(): TrunkConfig {
    return this.trunks[0]!;
  }

  /** Resolves when the trunk may take one more call. */
  take(trunk: TrunkConfig): Promise<void> {
    let b = this.buckets.get(trunk.name);
    if (!b) {
      b = new TokenBucket(trunk.cps);
      this.buckets.set(trunk.name, b);
    }
    return b.take();
  }
}
