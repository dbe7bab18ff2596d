import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { SharedCount } from '../../src/engine/cluster-limits.js';
import { scripts } from '../../src/store/scripts.js';
import { REDIS_URL, waitFor } from '../helpers/engine.js';

/**
 * A share given back (a trunk channel freed, sip.trunkLimits: cluster) while Redis refuses writes for a moment (full:
 * OOM) is written once Redis takes it again. Dropped, it stayed counted for as long as the worker's lease was renewed,
 * and the trunk's next calls waited for a channel nobody held (seen with Redis full for 3 s while calls waited).
 */
const redis = new Redis(REDIS_URL);
const prefix = `fvtest-${randomBytes(4).toString('hex')}`;
afterAll(async () => {
  const left = await redis.keys(`${prefix}:*`);
  if (left.length > 0) await redis.del(...left);
  redis.disconnect();
});

describe('SharedCount.give when Redis refuses it for a moment', () => {
  it('is sent again and lands: the share is free for the next take', async () => {
    const keys = { count: `${prefix}:count`, leases: `${prefix}:leases`, wants: `${prefix}:wants` };
    // Redis refuses the first two gives as a full Redis does (OOM), then takes them.
    let refusals = 2;
    const refusing = new Proxy(redis, {
      get(target, prop, receiver) {
        if (prop === 'evalsha') {
          return async (sha: string, ...rest: (string | number)[]) => {
            if (sha === scripts.giveSharedCount.sha && refusals > 0) {
              refusals--;
              throw new Error("OOM command not allowed when used memory > 'maxmemory'.");
            }
            return (target.evalsha as (...a: unknown[]) => Promise<unknown>)(sha, ...rest);
          };
        }
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    }) as Redis;
    const failures: string[] = [];
    const count = new SharedCount(refusing, keys, 'w1', 1, { onGiveFailed: (err) => failures.push(err.message) });
    expect(await count.take(1, 0)).toMatchObject({ granted: 1, total: 1 });
    count.give(-1);
    // The refusal is reported once, and the give lands when Redis takes it.
    await waitFor(async () => ((await redis.hget(keys.count, 'w1')) === null ? true : undefined), 3000, 20);
    expect(failures).toHaveLength(1);
    expect(refusals).toBe(0);
    expect(await count.take(1, 0)).toMatchObject({ granted: 1, total: 1 });
  });
});
