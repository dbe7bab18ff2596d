import type { Redis } from 'ioredis';
import type { RangeConfig } from '../config/schema.js';
import type { Keys } from '../store/keys.js';
import { adoptPreviousNames } from '../store/scripts.js';
import type { RangeUsability } from './range-health.js';
import { untilTaken } from '../store/redis.js';

export interface ReservedCli {
  range: RangeConfig;
  /** prefix + code, E.164. Contains the code: never log it, never store it in clear. */
  cli: string;
  /**
   * The range is quarantined (range health), used because every range that may carry the call is: its outcome does
   * not count in the window it is judged on when it is back.
   */
  quarantined?: true;
}

/**
 * Picks the DID range of a flash call: ranges of the destination's country
 * first (rotating between them), then any other range. A CLI is reserved for a
 * destination for `cooldownSeconds` (SET NX EX), so the same caller ID never
 * rings the same number twice in a short window.
 */
export class RangeSelector {
  private readonly byCountry = new Map<string, RangeConfig[]>();
  /** Each destination country's turn in the rotation (one entry per country seen). */
  private readonly turns = new Map<string, number>();

  constructor(
    private readonly ranges: readonly RangeConfig[],
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly cooldownSeconds: number,
    /**
     * Turns a CLI into the cooldown key's CLI part: a keyed MAC, because the
     * CLI contains the code and must not sit in clear in a key name.
     */
    private readonly cliKey: (cli: string) => string,
    /** Range health: quarantined ranges are skipped (unless every candidate is quarantined). */
    private readonly health?: RangeUsability,
    /** The CLI part under each previous master key (after a rotation): cooldowns set before it still apply. */
    private readonly previousCliKeys: (cli: string) => string[] = () => [],
  ) {
    for (const r of ranges) {
      const list = this.byCountry.get(r.country) ?? [];
      list.push(r);
      this.byCountry.set(r.country, list);
    }
  }

  /**
   * Candidate ranges (those `accept`ed) in order of preference for a destination country: its own ranges, then the
   * others, each list rotating by a turn of that country's own (one turn for all countries would give a country
   * whose requests alternate with another's the same first range every time), rotated after `accept` filtered it.
   */
  candidates(country: string, accept: (range: RangeConfig) => boolean = () => true, use: 'flash' | 'voice' = 'flash'): RangeConfig[] {
    // Voice caller IDs turn on their own: a voice call between two flash calls must not take the flash calls' turn.
    const key = use === 'flash' ? country : `voice:${country}`;
    const turn = this.turns.get(key) ?? 0;
    this.turns.set(key, (turn + 1) % 1_000_000);
    const local = rotate((this.byCountry.get(country) ?? []).filter(accept), turn);
    const other = rotate(
      this.ranges.filter((r) => r.country !== country && accept(r)),
      turn,
    );
    return [...local, ...other];
  }

  /** Some range is `accept`ed (numbers.ranges[].trunks: its caller IDs may go on a trunk that routes the number). */
  has(accept: (range: RangeConfig) => boolean): boolean {
    return this.ranges.some(accept);
  }

  /**
   * Reserves the first candidate (of those `accept`ed) whose CLI (prefix + code) is not cooling down
   * towards this destination; null when every range is.
   */
  async reserve(
    country: string,
    code: string,
    destinationMac: string,
    previousDestinationMacs: readonly string[] = [],
    accept: (range: RangeConfig) => boolean = () => true,
  ): Promise<ReservedCli | null> {
    const { list, quarantined } = await this.usable(this.candidates(country, accept));
    for (const range of list) {
      const cli = range.prefix + code;
      const reserved: ReservedCli = quarantined ? { range, cli, quarantined } : { range, cli };
      if (this.cooldownSeconds === 0) return reserved;
      const name = this.keys.cliCooldown(this.cliKey(cli), destinationMac);
      // Both parts of an old name come from the same previous key (same index).
      const old = this.previousCliKeys(cli).flatMap((c, i) => (previousDestinationMacs[i] ? [this.keys.cliCooldown(c, previousDestinationMacs[i])] : []));
      await adoptPreviousNames(this.redis, old, name);
      const ok = await untilTaken(this.redis, () => this.redis.set(name, '1', 'EX', this.cooldownSeconds, 'NX'));
      if (ok === 'OK') return reserved;
    }
    return null;
  }

  /** Candidates without the quarantined ranges; all of them when every one is quarantined (better a doubtful CLI than none). */
  private async usable(list: RangeConfig[]): Promise<{ list: RangeConfig[]; quarantined?: true }> {
    const health = this.health;
    if (!health) return { list };
    const ok = (await Promise.all(list.map((r) => health.usable(r.prefix)))).map((u, i) => (u ? list[i] : undefined));
    const usable = ok.filter((r): r is RangeConfig => r !== undefined);
    return usable.length || !list.length ? { list: usable } : { list, quarantined: true };
  }
}

function rotate<T>(list: readonly T[], n: number): T[] {
  if (list.length < 2) return [...list];
  const k = n % list.length;
  return [...list.slice(k), ...list.slice(0, k)];
}
