import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { untilTaken } from './redis.js';

/** A Lua script from src/store/lua, named `verbNoun-<numKeys>.lua` as in BullMQ. */
export class LuaScript {
  readonly sha: string;
  readonly numKeys: number;

  constructor(
    readonly name: string,
    readonly source: string,
  ) {
    this.sha = createHash('sha1').update(source).digest('hex');
    const m = /-(\d+)$/.exec(name);
    if (!m) throw new Error(`lua script name ${name} must end in -<numKeys>`);
    this.numKeys = Number(m[1]);
  }

  /**
   * Reads src/store/lua/<name>.lua, each line `--- @include "<file>"` replaced by lua/includes/<file>.lua (as in
   * BullMQ), and each line `--- @function "<script>" as <fn>` by that whole script (with its includes) as a local
   * function `<fn>(KEYS, ARGV)`: a script that runs others in one step calls them as they are, not a copy of them.
   */
  static load(name: string): LuaScript {
    const source = readLua(name)
      .replace(/^--- @include "([\w-]+)"$/gm, (_, file: string) => readLua(`includes/${file}`))
      .replace(/^--- @function "([\w-]+)" as (\w+)$/gm, (_, script: string, fn: string) => {
        return `local function ${fn}(KEYS, ARGV)\n${LuaScript.load(script).source}\nend`;
      });
    return new LuaScript(name, source);
  }

  /**
   * EVALSHA, falling back to EVAL once when the server does not know the script yet. On a connection that waits for
   * Redis (the delivery writes), a refusal that passes (Redis full, a replica, loading) is waited out: tried again
   * after 100 ms, then twice as long each time up to 2 s, until Redis takes it. Redis refuses such a script before
   * its first write, so trying again applies it once.
   */
  async run(redis: Redis, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown> {
    if (keys.length !== this.numKeys) throw new Error(`${this.name}: expected ${this.numKeys} keys`);
    return untilTaken(redis, () => this.once(redis, keys, args));
  }

  private async once(redis: Redis, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown> {
    try {
      return await redis.evalsha(this.sha, this.numKeys, ...keys, ...args);
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
      return await redis.eval(this.source, this.numKeys, ...keys, ...args);
    }
  }
}

function readLua(name: string): string {
  return readFileSync(fileURLToPath(new URL(`./lua/${name}.lua`, import.meta.url)), 'utf8');
}

/** All scripts, loaded once per process. */
export const scripts = {
  createVerification: LuaScript.load('createVerification-9'),
  createAdmitted: LuaScript.load('createAdmitted-13'),
  expireVerification: LuaScript.load('expireVerification-7'),
  recordCheck: LuaScript.load('recordCheck-6'),
  applyEvent: LuaScript.load('applyEvent-4'),
  rateLimit: LuaScript.load('rateLimit-1'),
  admitRequest: LuaScript.load('admitRequest-2'),
  recordAuthFailure: LuaScript.load('recordAuthFailure-2'),
  checkVelocity: LuaScript.load('checkVelocity-3'),
  swapLive: LuaScript.load('swapLive-1'),
  resendVerification: LuaScript.load('resendVerification-5'),
  undoResend: LuaScript.load('undoResend-4'),
  mapSmsMessage: LuaScript.load('mapSmsMessage-6'),
  matchSmsReceipt: LuaScript.load('matchSmsReceipt-5'),
  markSmsWaiting: LuaScript.load('markSmsWaiting-4'),
  markSmsSubmitting: LuaScript.load('markSmsSubmitting-2'),
  markSmsWithdrawn: LuaScript.load('markSmsWithdrawn-1'),
  replaceField: LuaScript.load('replaceField-1'),
  settleRefusedResend: LuaScript.load('settleRefusedResend-4'),
  markSmsRefused: LuaScript.load('markSmsRefused-2'),
  settleSms: LuaScript.load('settleSms-4'),
  claimDelivery: LuaScript.load('claimDelivery-1'),
  advanceWorkflow: LuaScript.load('advanceWorkflow-8'),
  applyStepEvent: LuaScript.load('applyStepEvent-4'),
  cancelVerification: LuaScript.load('cancelVerification-6'),
  recordAttemptFields: LuaScript.load('recordAttemptFields-1'),
  recordAttemptEvent: LuaScript.load('recordAttemptEvent-3'),
  adoptKey: LuaScript.load('adoptKey-2'),
  prepareWebhook: LuaScript.load('prepareWebhook-4'),
  tripWebhookBreaker: LuaScript.load('tripWebhookBreaker-2'),
  reserveRateSlots: LuaScript.load('reserveRateSlots-1'),
  takeSharedCount: LuaScript.load('takeSharedCount-3'),
  giveSharedCount: LuaScript.load('giveSharedCount-2'),
};

/**
 * Moves state kept under key names made with a previous master key's MACs to
 * the current name (adoptKey-2.lua), before that state is read: a rotation
 * does not reset velocity windows, live pointers or CLI cooldowns. Nothing to
 * do (no round trip) without previous keys.
 */
export async function adoptPreviousNames(redis: Redis, previousNames: readonly string[], currentName: string): Promise<void> {
  for (const old of previousNames) if (old !== currentName) await scripts.adoptKey.run(redis, [old, currentName], []);
}
