import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { AccountFieldCache } from '../accounts/account-field-cache.js';
import { AccountNotFoundError } from '../accounts/account-store.js';
import type { Config } from '../config/schema.js';
import type { Sealer } from '../crypto/sealer.js';
import { CONVERSION_TTL_MS, type RangeHealth } from '../numbers/range-health.js';
import { CounterBatch } from '../store/counter-batch.js';
import type { Keys } from '../store/keys.js';
import { adoptPreviousNames, scripts } from '../store/scripts.js';
import { ApiError } from './errors.js';
import { accountFraudSchema, fraudPolicy, numberPrefix, type AccountFraudOverrides, type FraudPolicy } from './fraud-rules.js';
import { utcDay, type Method } from './types.js';

/** What the test-number path publishes (the events module's publisher fits). */
export interface DeliveredEventSink {
  publish(e: {
    request_id: string;
    account_id: string;
    method: Method;
    status: 'delivered';
    detail: Record<string, string | number | boolean>;
  }): Promise<string>;
}

/** Per-country conversion counters of this process (Prometheus; metrics/metrics.ts has them). */
export interface ConversionMetrics {
  conversionSent(country: string, method: Method): void;
  conversionVerified(country: string, method: Method): void;
}

/** A send recorded in the velocity windows, so that it can be taken back if the request fails after all. */
export interface AdmittedSend {
  member: string;
  keys: string[];
}

/** A send ready for checkVelocity-3 (FraudControls.planSend). */
export interface PlannedSend extends AdmittedSend {
  windows: readonly { limit: number; windowSeconds: number }[];
  /** checkVelocity-3's ARGV. */
  args: (string | number)[];
}

/** checkVelocity-3's answer: {"ok"} or {"limited", index of the full window (1..3), ms until a slot frees}. */
export type VelocityResult = [string, number?, number?];

/** The 429 of a send refused by a velocity window (checkVelocity-3 answered "limited"), with Retry-After. */
export function velocityRefusal(send: Pick<PlannedSend, 'windows'>, result: VelocityResult): ApiError {
  const i = Number(result[1]) - 1;
  const label = VELOCITY_LABELS[i]!;
  const w = send.windows[i]!;
  const retryAfter = Math.max(1, Math.ceil(Number(result[2]) / 1000));
  const err = new ApiError(
    'rate_limited',
    `Too many verifications ${label.what}: the ${label.name} limit is ${w.limit} per ${w.windowSeconds} s; retry in ${retryAfter} s`,
    { limit: label.name },
  );
  err.headers['Retry-After'] = retryAfter;
  return err;
}

const VELOCITY_LABELS = [
  { name: 'per-number', what: 'to this number' },
  { name: 'per-prefix', what: 'to numbers of this prefix' },
  { name: 'per-IP', what: 'for this client IP' },
] as const;

/**
 * The stateful fraud controls, in Redis: per-account overrides, sliding-window
 * velocity limits, the live-verification pointer of an (account, number),
 * test numbers' delivery, and conversion counters. Each is a method of its
 * own so that a workflow step can apply the same checks as POST /v1/verify.
 * Keys hold HMACs of numbers, prefixes and IPs: never a number in clear.
 */
export class FraudControls {
  /** Where the conversion counters (verified) wait for their write (range health's batch when there is one: one write per flush). */
  readonly counters: CounterBatch;
  /** The `fraud` field of accounts, reused for `accounts.fieldCacheMs` (account-field-cache.ts). */
  private readonly fields: AccountFieldCache;
  /** The stored `fraud` field opened and validated: one function, so that its result is kept beside the cached field. */
  private readonly parseStored: (raw: string | null) => StoredOverrides | undefined | typeof UNREADABLE;

  constructor(
    private readonly deps: {
      redis: Redis;
      keys: Keys;
      sealer: Sealer;
      config: Readonly<Config>;
      events: DeliveredEventSink;
      /** Set where flash calls are tracked per DID range. */
      rangeHealth?: RangeHealth;
      /** `flashverify_conversion_sent_total` / `_verified_total{country,method}`. */
      metrics?: ConversionMetrics;
      logger: Logger;
      /** The process's counter batch; left out: range health's, or one of its own (flushed every 250 ms). */
      counters?: CounterBatch;
    },
  ) {
    this.counters = deps.counters ?? deps.rangeHealth?.counters ?? new CounterBatch(deps.redis, deps.logger);
    this.fields = new AccountFieldCache(deps.redis, deps.keys, { ttlMs: deps.config.accounts.fieldCacheMs });
    this.parseStored = (raw) => parseOverrides(raw, deps.sealer);
  }

  // ------------------------------------------------------------------ policy

  /**
   * The rules in force for an account: server defaults + its overrides.
   * `fresh`: read the overrides from Redis, not from this process's cache.
   */
  async policy(accountId: string, options: { fresh?: boolean } = {}): Promise<FraudPolicy> {
    return fraudPolicy(this.deps.config.fraud, await this.overrides(accountId, options));
  }

  /**
   * An account's overrides, or undefined (a corrupt value counts as none, and
   * is logged). Reused for `accounts.fieldCacheMs`, parsed once per read: a
   * change made by another process applies here within it (setOverrides in
   * this process: at once). `fresh`: read from Redis (the admin API's GET).
   * The object returned is shared: not to be modified.
   */
  async overrides(accountId: string, options: { fresh?: boolean } = {}): Promise<AccountFraudOverrides | undefined> {
    if (options.fresh) this.fields.invalidate(accountId, 'fraud');
    const read = await this.fields.getParsed(accountId, 'fraud', this.parseStored);
    if (read !== UNREADABLE && read !== undefined && read[RESEAL] !== undefined) this.reseal(accountId, read);
    if (read === UNREADABLE) {
      this.deps.logger.error({ account_id: accountId }, 'unreadable fraud overrides on the account; server defaults apply');
      return undefined;
    }
    return read;
  }

  /**
   * Overrides sealed under a previous master key (a rotation, README "Rotating the master key"), or written in clear
   * by an earlier version: sealed again under the current key, once, unless they were set anew meanwhile.
   */
  private reseal(accountId: string, read: StoredOverrides): void {
    const raw = read[RESEAL]!;
    // Once per value read (the parsed value is cached and shared): the mark goes with the first reader.
    delete read[RESEAL];
    const overrides: AccountFraudOverrides = { ...read };
    scripts.replaceField
      .run(this.deps.redis, [this.deps.keys.account(accountId)], ['fraud', raw, this.deps.sealer.seal(JSON.stringify(overrides), FRAUD_AAD)])
      .then(
        () => this.fields.invalidate(accountId, 'fraud'),
        (err: Error) => this.deps.logger.warn({ account_id: accountId, err: err.message }, 'could not seal the fraud overrides again under the current master key'),
      );
  }

  /** Replaces an account's overrides (null removes them). Validated: throws AppError on a bad value. */
  async setOverrides(accountId: string, overrides: unknown): Promise<AccountFraudOverrides | null> {
    const key = this.deps.keys.account(accountId);
    if (!(await this.deps.redis.exists(key))) throw new AccountNotFoundError(accountId);
    if (overrides === null) {
      await this.deps.redis.hdel(key, 'fraud');
      this.fields.invalidate(accountId, 'fraud');
      return null;
    }
    const parsed = accountFraudSchema.safeParse(overrides);
    if (!parsed.success) {
      throw new ApiError(
        'invalid_request',
        parsed.error.issues.map((i) => (i.path.length ? `${i.path.join('.')}: ${i.message}` : i.message)).join('; '),
      );
    }
    // Sealed: test numbers and their fixed codes are in it (a number and a code that verifies it, never in clear).
    await this.deps.redis.hset(key, 'fraud', this.deps.sealer.seal(JSON.stringify(parsed.data), FRAUD_AAD));
    this.fields.invalidate(accountId, 'fraud');
    return parsed.data;
  }

  // ------------------------------------------------------------------ velocity

  /**
   * Records one send to `e164` in the account's sliding windows, or throws 429
   * `rate_limited` naming the limit, with Retry-After. Atomic: a refused send
   * counts in no window. Every send counts: a request, a resend, and each
   * later step of a workflow (without `clientIp`: the per-IP window counts
   * the requests an address makes, not the steps they go through).
   */
  async admitSend(accountId: string, policy: FraudPolicy, e164: string, clientIp: string | undefined, now = Date.now()): Promise<AdmittedSend> {
    return this.admitPlanned(await this.planSend(accountId, policy, e164, clientIp, now));
  }

  /** admitSend of a send already planned (planSend). */
  async admitPlanned(send: PlannedSend): Promise<AdmittedSend> {
    const result = (await scripts.checkVelocity.run(this.deps.redis, send.keys, send.args)) as VelocityResult;
    if (result[0] === 'limited') throw velocityRefusal(send, result);
    return { member: send.member, keys: send.keys };
  }

  /**
   * The velocity windows a send to `e164` counts in, and checkVelocity-3's arguments for it, with the windows
   * counted under the previous master key's names moved first: for admitSend, or for the api's one-step create
   * (createAdmitted-13), which checks and records them with the record.
   */
  async planSend(accountId: string, policy: FraudPolicy, e164: string, clientIp: string | undefined, now = Date.now()): Promise<PlannedSend> {
    const { keys, sealer } = this.deps;
    const v = policy.velocity;
    const subjects = [
      ['num', 'velocity-number', e164],
      ['pfx', 'velocity-prefix', numberPrefix(e164)],
      ['ip', 'velocity-ip', clientIp ?? ''],
    ] as const;
    const windowKeys = subjects.map(([kind, domain, value]) => keys.velocity(accountId, kind, sealer.mac(domain, value)));
    // Windows counted under the previous master key's names still count after a rotation.
    for (const [i, [kind, domain, value]] of subjects.entries()) {
      await adoptPreviousNames(this.deps.redis, sealer.previousMacs(domain, value).map((m) => keys.velocity(accountId, kind, m)), windowKeys[i]!);
    }
    const windows = [v.perNumber, v.perPrefix, clientIp === undefined ? { limit: 0, windowSeconds: 1 } : v.perIp];
    const member = `${now}:${randomUUID()}`;
    return { member, keys: windowKeys, windows, args: [now, member, ...windows.flatMap((w) => [w.limit, w.windowSeconds * 1000])] };
  }

  /** Takes back an admitted send whose request failed afterwards (402, 403 ...). */
  async releaseSend(send: AdmittedSend): Promise<void> {
    const p = this.deps.redis.pipeline();
    for (const k of send.keys) p.zrem(k, send.member);
    await p.exec();
  }

  // ------------------------------------------------------------------ one live verification

  /**
   * The pointer key of an (account, number[, method]), or undefined when the
   * rule is off. `per_number` (the default): one key per number, whatever the
   * method. `per_method`: one per method, and one for workflow requests
   * (`scope` "workflow"), which move from method to method: a workflow is
   * live beside one-method requests of the same number, not beside another
   * workflow. A pointer set under the previous master key's name (before a
   * rotation) is moved to it first.
   */
  async liveKey(accountId: string, policy: FraudPolicy, e164: string, scope: Method | 'workflow'): Promise<string | undefined> {
    if (policy.liveVerification === 'off') return undefined;
    const subject = policy.liveVerification === 'per_method' ? `${accountId}:${e164}:${scope}` : `${accountId}:${e164}`;
    const { keys, sealer } = this.deps;
    const key = keys.liveVerification(sealer.mac('live', subject));
    await adoptPreviousNames(this.deps.redis, sealer.previousMacs('live', subject).map((m) => keys.liveVerification(m)), key);
    return key;
  }

  /**
   * The pointer's value and, when it names a verification still live (sent or
   * delivered, not expired, of this account), that verification (its current
   * method; `workflow` when it is a workflow request). A pointer whose record
   * does not exist yet is live too: its request is being created (the pointer
   * is claimed first); after a crash in between, it lapses with its TTL.
   */
  async live(
    liveKey: string,
    accountId: string,
    now = Date.now(),
  ): Promise<{ pointer: string; live?: { requestId: string; method: Method | undefined; workflow: boolean } }> {
    const pointer = (await this.deps.redis.get(liveKey)) ?? '';
    if (!pointer) return { pointer };
    const [owner, status, expiresAt, method, wf] = await this.deps.redis.hmget(
      this.deps.keys.verification(pointer),
      'account_id',
      'status',
      'expires_at',
      'method',
      'wf',
    );
    if (!owner) return { pointer, live: { requestId: pointer, method: undefined, workflow: false } };
    const isLive = owner === accountId && (status === 'sent' || status === 'delivered') && now < Number(expiresAt);
    return isLive ? { pointer, live: { requestId: pointer, method: method as Method, workflow: wf !== null } } : { pointer };
  }

  /** Points the key at `requestId` if it still holds `expected`; returns true, or false when another request won. */
  async claimLive(liveKey: string, expected: string, requestId: string, ttlMs: number): Promise<boolean> {
    return (await scripts.swapLive.run(this.deps.redis, [liveKey], [expected, requestId, ttlMs])) === 'ok';
  }

  /** Removes the pointer if it still names `requestId` (its creation failed). */
  async releaseLive(liveKey: string, requestId: string): Promise<void> {
    await scripts.swapLive.run(this.deps.redis, [liveKey], [requestId, '', 0]);
  }

  // ------------------------------------------------------------------ test numbers

  /** A test number's verification is "delivered" at once, by the API, without any network. */
  async deliverTestNumber(base: { request_id: string; account_id: string; method: Method }): Promise<void> {
    await this.deps.events.publish({ ...base, status: 'delivered', detail: { test_number: true } });
  }

  // ------------------------------------------------------------------ conversion

  /**
   * A send to a destination country: each request, resend and workflow step,
   * under the method it used, so that sent and verified (counted under the
   * method of the step that verified) compare. This is the Prometheus counter
   * only, counted by the process that queued the send (the api, the workflow
   * advancer, or the enqueue reconciler for a request no api queued). The
   * Redis counter (`country:<cc>:<method>:sent` of the UTC day) is
   * written by the Lua script that charges the send, in the same step
   * (countSent.lua, in createVerification-9, resendVerification-5 and
   * advanceWorkflow-8), not here after the delivery job is queued: a request
   * queued by the enqueue reconciler, its api process having died first, is
   * then counted once like any other, and a refund always finds the count it
   * takes back.
   */
  trackSent(country: string, method: Method): void {
    this.deps.metrics?.conversionSent(country, method);
  }

  /** A verified request: counted for its country and method, and for its DID range when it was a flash call (in this process's counter batch). */
  async trackVerified(
    record: { country?: string | null; method?: string | null; cliRange?: string | null; sentAt?: number; cliQuarantined?: boolean },
    now = Date.now(),
  ): Promise<void> {
    if (record.country && record.method) {
      this.deps.metrics?.conversionVerified(record.country, record.method as Method);
      this.counters.hincrby(this.deps.keys.conversion(utcDay(now)), `country:${record.country}:${record.method}:verified`, 1, CONVERSION_TTL_MS);
    }
    if (record.cliRange && this.deps.rangeHealth) {
      await this.deps.rangeHealth.recordVerified(record.cliRange, record.sentAt ?? now, now, !record.cliQuarantined);
    }
  }

  /** Conversion counters of one UTC day, as stored (`country:GB:flash_call:sent` → n ...), this process's pending ones written first. */
  async conversion(day: string): Promise<Record<string, number>> {
    const health = this.deps.rangeHealth;
    // One flush when they share the process's batch (the engine's case).
    await Promise.all([this.counters.flush(), health && health.counters !== this.counters ? health.flush() : undefined]);
    const h = await this.deps.redis.hgetall(this.deps.keys.conversion(day));
    return Object.fromEntries(Object.entries(h).map(([k, v]) => [k, Number(v)]));
  }
}

const UNREADABLE = Symbol('unreadable fraud overrides');

/** What an account's sealed `fraud` field is bound to (AES-GCM additional data). */
const FRAUD_AAD = 'account-fraud';

/**
 * The stored `fraud` field, opened and validated (its result is kept beside the cached field): sealed (setOverrides),
 * or the JSON in clear an earlier version wrote, read as it is until the overrides are set again. One sealed with a
 * master key no longer configured is unreadable.
 */
function parseOverrides(raw: string | null, sealer: Sealer): StoredOverrides | undefined | typeof UNREADABLE {
  if (!raw) return undefined;
  const sealed = !raw.startsWith('{');
  let json = raw;
  if (sealed) {
    try {
      json = sealer.open(raw, FRAUD_AAD);
    } catch {
      return UNREADABLE;
    }
  }
  const parsed = accountFraudSchema.safeParse(safeJson(json));
  if (!parsed.success) return UNREADABLE;
  const stored: StoredOverrides = parsed.data;
  if (!sealed || !sealer.isCurrent(raw)) stored[RESEAL] = raw;
  return stored;
}

/** Marks overrides read in clear or under a previous master key with the value read: to be sealed again (reseal). */
const RESEAL = Symbol('reseal');
type StoredOverrides = AccountFraudOverrides & { [RESEAL]?: string };

function safeJson(s: string): unknown {
  try {
    return JSON.parse(s) as unknown;
  } catch {
    return undefined;
  }
}
