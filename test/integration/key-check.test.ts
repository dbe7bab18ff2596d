import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { checkMasterKey } from '../../src/crypto/key-check.js';
import { Sealer } from '../../src/crypto/sealer.js';
import { ConfigError } from '../../src/errors/app-error.js';
import { Keys } from '../../src/store/keys.js';
import { deletePrefix, REDIS_URL, startTestEngine, testConfig } from '../helpers/engine.js';

/**
 * Every process of a deployment must use the same master key: the first one seals a sentinel in Redis, the
 * others check it opens, so a process with another key refuses to start instead of failing every delivery.
 */
describe('master key check (<prefix>:keycheck)', () => {
  const redis = new Redis(REDIS_URL);
  const prefixes: string[] = [];
  afterAll(async () => {
    for (const p of prefixes) await deletePrefix(redis, p);
    await redis.quit();
  });
  const key = () => randomBytes(32);

  it('first process writes it, the same key opens it, another key is refused, a rotation re-seals it', async () => {
    const keys = new Keys(`fvtest-keycheck-${randomBytes(4).toString('hex')}`);
    prefixes.push(keys.prefix);
    const [a, b, c] = [key(), key(), key()];
    expect(await checkMasterKey(redis, keys.keyCheck(), new Sealer(a))).toBe('created');
    expect(await checkMasterKey(redis, keys.keyCheck(), new Sealer(a))).toBe('ok');
    expect(await redis.get(keys.keyCheck())).not.toContain('flashverify');
    const refused = await checkMasterKey(redis, keys.keyCheck(), new Sealer(b)).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ConfigError);
    expect(String((refused as Error).message)).toMatch(/security\.masterKey: this key does not open what this deployment sealed in Redis .*previousMasterKeys/);
    // Rotation: the new key with the old one listed opens it and seals it again; then the old key may go.
    expect(await checkMasterKey(redis, keys.keyCheck(), new Sealer(c, [a]))).toBe('resealed');
    expect(await checkMasterKey(redis, keys.keyCheck(), new Sealer(c))).toBe('ok');
    await expect(checkMasterKey(redis, keys.keyCheck(), new Sealer(a))).rejects.toBeInstanceOf(ConfigError);
  });

  it('an engine started with another key than the deployment’s refuses to start', async () => {
    const first = testConfig();
    prefixes.push(first.redis.prefix);
    const engine = await startTestEngine(first, 'api');
    await engine.engine.stop(); // its keys stay (TestEngine.stop would delete them)
    await engine.redis.quit();
    const other = testConfig({ redis: { prefix: first.redis.prefix } });
    expect(other.security.masterKey).not.toBe(first.security.masterKey);
    await expect(startTestEngine(other, 'api')).rejects.toThrow(/this key does not open what this deployment sealed/);
  });
});
