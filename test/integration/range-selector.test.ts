import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { Sealer } from '../../src/crypto/sealer.js';
import { RangeSelector } from '../../src/numbers/range-selector.js';
import { Keys } from '../../src/store/keys.js';
import { deletePrefix, REDIS_URL } from '../helpers/engine.js';

describe('RangeSelector (real Redis)', () => {
  const redis = new Redis(REDIS_URL);
  const keys = new Keys(`fvrange-${randomBytes(4).toString('hex')}`);
  afterAll(async () => {
    await deletePrefix(redis, keys.prefix);
    await redis.quit();
  });
  const sealer = new Sealer(randomBytes(32));
  const mac = (cli: string) => sealer.mac('cli', cli);
  const ranges = [
    { prefix: '+44190873', country: 'GB' },
    { prefix: '+44203456', country: 'GB' },
    { prefix: '+3319087', country: 'FR' },
  ];

  it('prefers ranges of the destination country, then any other', async () => {
    const s = new RangeSelector(ranges, redis, keys, 60, mac);
    const first = await s.reserve('GB', '1234', 'dest-a');
    expect(first?.range.country).toBe('GB');
    expect(first?.cli).toBe(first!.range.prefix + '1234');
    expect((await s.reserve('FR', '1234', 'dest-b'))?.range.country).toBe('FR');
    expect((await s.reserve('DE', '1234', 'dest-c'))?.cli).toMatch(/1234$/);
  });

  it('never gives the same CLI to the same destination within the cooldown', async () => {
    const s = new RangeSelector(ranges, redis, keys, 60, mac);
    const clis = new Set<string>();
    for (let i = 0; i < 3; i++) {
      const r = await s.reserve('GB', '4321', 'dest-x');
      expect(r).not.toBeNull();
      clis.add(r!.cli);
    }
    expect(clis.size).toBe(3); // both GB ranges, then the FR one
    expect(await s.reserve('GB', '4321', 'dest-x')).toBeNull();
    // Another destination is not affected, and the cooldown expires.
    expect(await s.reserve('GB', '4321', 'dest-y')).not.toBeNull();
    const ttl = await redis.ttl(keys.cliCooldown(mac('+441908734321'), 'dest-x'));
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(60);
  });

  it('shares a country\'s calls between its ranges whatever other countries\' requests come between them, after trunk restrictions', async () => {
    const s = new RangeSelector([...ranges, { prefix: '+44207946', country: 'GB', trunks: ['bt'] }], redis, keys, 0, mac);
    const used = new Map<string, number>();
    for (let i = 0; i < 12; i++) {
      // GB and FR requests alternate; the +44207946 range may not be presented on the trunk that carries these.
      const gb = await s.reserve('GB', '1111', `dest-gb-${i}`, [], (r) => r.prefix !== '+44207946');
      used.set(gb!.range.prefix, (used.get(gb!.range.prefix) ?? 0) + 1);
      expect((await s.reserve('FR', '1111', `dest-fr-${i}`))?.range.country).toBe('FR');
    }
    expect(Object.fromEntries(used)).toEqual({ '+44190873': 6, '+44203456': 6 });
    // Voice caller IDs (voice-processor.ts) between the flash calls take turns of their own.
    used.clear();
    for (let i = 0; i < 10; i++) {
      const gb = await s.reserve('GB', '3333', `dest-gbv-${i}`, [], (r) => r.prefix !== '+44207946');
      used.set(gb!.range.prefix, (used.get(gb!.range.prefix) ?? 0) + 1);
      s.candidates('GB', undefined, 'voice');
    }
    expect(Object.fromEntries(used)).toEqual({ '+44190873': 5, '+44203456': 5 });
  });

  it('every range quarantined: one is used all the same, marked so its outcome is not judged; one usable range: only it', async () => {
    const quarantined = new Set(['+44190873', '+44203456', '+3319087']);
    const s = new RangeSelector(ranges, redis, keys, 0, mac, { usable: async (prefix) => !quarantined.has(prefix) });
    const doubtful = await s.reserve('GB', '2222', 'dest-q');
    expect(doubtful).toMatchObject({ quarantined: true });
    quarantined.delete('+3319087');
    const fine = await s.reserve('GB', '2222', 'dest-q');
    expect(fine?.range.prefix).toBe('+3319087');
    expect(fine?.quarantined).toBeUndefined();
  });
});
