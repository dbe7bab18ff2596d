import type { Redis } from 'ioredis';
import { ConfigError } from '../errors/app-error.js';
import type { Sealer } from './sealer.js';

/** What the key check seals: it only has to open. */
const SENTINEL = 'flashverify master key check v1';

/**
 * Makes sure this process uses the deployment's master key before it seals or opens anything: a sealed sentinel
 * at `name` (`<prefix>:keycheck`), written by the first process that starts on the Redis, must open with this
 * process's key (or one of `security.previousMasterKeys`). Without the check, an api and a worker started with
 * different keys (say, each generated its own `masterKeyFile` on its host) run "fine": every delivery then fails
 * to open its record, and secrets created on one side do not authenticate on the other. A sentinel sealed with a
 * previous key is sealed again with the current one, so it keeps opening once the old key is dropped.
 */
export async function checkMasterKey(redis: Redis, name: string, sealer: Sealer): Promise<'created' | 'ok' | 'resealed'> {
  for (let attempt = 0; ; attempt++) {
    const stored = await redis.get(name);
    if (stored === null) {
      if ((await redis.set(name, sealer.seal(SENTINEL, name), 'NX')) === 'OK') return 'created';
      if (attempt > 0) throw new Error(`${name}: written and gone again; is something deleting keys?`);
      continue; // another process wrote it first: check that one
    }
    let plain: string | undefined;
    try {
      plain = sealer.open(stored, name);
    } catch {
      plain = undefined;
    }
    if (plain !== SENTINEL) {
      throw new ConfigError([
        `security.masterKey: this key does not open what this deployment sealed in Redis (${name}): every process of a ` +
          'deployment (api, workers, the CLI, producers) must use the same master key (security.masterKey / ' +
          'FLASHVERIFY_MASTER_KEY, or the same masterKeyFile); after a rotation, list the old key in security.previousMasterKeys',
      ]);
    }
    if (sealer.isCurrent(stored)) return 'ok';
    await redis.set(name, sealer.seal(SENTINEL, name));
    return 'resealed';
  }
}
