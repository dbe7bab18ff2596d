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
});
