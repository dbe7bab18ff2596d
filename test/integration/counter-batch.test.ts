import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config/schema.js';
import type { Sealer } from '../../src/crypto/sealer.js';
import { RangeHealth } from '../../src/numbers/range-health.js';
import { CounterBatch } from '../../src/store/counter-batch.js';
import { Keys } from '../../src/store/keys.js';
import { connectRedis } from '../../src/store/redis.js';
import { FraudControls, type DeliveredEventSink } from '../../src/verification/fraud-controls.js';
import { utcDay } from '../../src/verification/types.js';
import { deletePrefix, REDIS_URL, waitFor } from '../helpers/engine.js';
import { monitorRedis } from '../helpers/redis-monitor.js';

/** The batched HINCRBY counters (conversion, range health) against the real Redis. */
/** The TTL of the per-day conversion counters. */
const DAYS_400_MS = 400 * 24 * 3600 * 1000;

describe('CounterBatch (real Redis)', () => {
  const redis = new Redis(REDIS_URL);
  const keys = new Keys(`fvcounters-${randomBytes(4).toString('hex')}`);
  const k = (name: string) => `${keys.prefix}:${name}`;
  afterAll(async () => {
    await deletePrefix(redis, keys.prefix);
    await redis.quit();
  });

  function capture(): { logger: pino.Logger; lines: () => Record<string, unknown>[] } {
    const out: string[] = [];
    const logger = pino({ level: 'info' }, { write: (s: string) => void out.push(s) });
    return { logger, lines: () => out.map((l) => JSON.parse(l) as Record<string, unknown>) };
  }

  it('sums the increments of many calls into one HINCRBY per (key, field) and one PEXPIRE per key, written on flush', async () => {
    const batch = new CounterBatch(redis, pino({ level: 'silent' }), { flushMs: 60_000 });
    const [a, b] = [k('conv:a'), k('rh:b')];
    for (let i = 0; i < 500; i++) {
      batch.hincrby(a, 'country:GB:flash_call:sent', 1, DAYS_400_MS);
      batch.hincrby(b, 'attempts', 1, 90_000);
      if (i % 2) batch.hincrby(b, 'sent', 2, 90_000);
    }
    expect(batch.pendingPairs).toBe(3);
    expect(await redis.exists(a, b)).toBe(0); // nothing written before the flush

    // What the batch sends, seen by Redis itself (only the commands on this test's keys).
    const seen: string[][] = [];
    const monitor = await monitorRedis(REDIS_URL, (args) => {
      if (args.some((x) => x.startsWith(keys.prefix))) seen.push(args);
    });
    await batch.flush();
    await redis.ping();
    await waitFor(async () => seen.length >= 5, 2000);
    monitor.disconnect();
    const flushed = seen.splice(0);

    expect(await redis.hgetall(a)).toEqual({ 'country:GB:flash_call:sent': '500' });
    expect(await redis.hgetall(b)).toEqual({ attempts: '500', sent: '500' });
    expect(flushed.map((c) => c[0])).toEqual(['hincrby', 'hincrby', 'hincrby', 'pexpire', 'pexpire']);
    expect(flushed.filter((c) => c[0] === 'hincrby').map((c) => c.slice(2))).toEqual([
      ['country:GB:flash_call:sent', '500'],
      ['attempts', '500'],
      ['sent', '500'],
    ]);
    // TTLs as given per key: range buckets in ms, conversion days for 400 days.
    const bTtl = await redis.pttl(b);
    expect(bTtl).toBeGreaterThan(80_000);
    expect(bTtl).toBeLessThanOrEqual(90_000);
    expect(await redis.pttl(a)).toBeGreaterThan(DAYS_400_MS - 60_000);
    expect(batch.pendingPairs).toBe(0);
    // A flush with nothing pending sends nothing; counting goes on from the written values.
    await batch.flush();
    batch.hincrby(b, 'attempts', 3, 90_000);
    await batch.close();
    expect(await redis.hget(b, 'attempts')).toBe('503');
  });

  it('flushes by itself every flushMs, on a timer that keeps no process alive', async () => {
    const batch = new CounterBatch(redis, pino({ level: 'silent' }), { flushMs: 50 });
    const key = k('timer');
    batch.hincrby(key, 'n', 1, 60_000);
    const timer = (batch as unknown as { timer: NodeJS.Timeout }).timer;
    expect(timer.hasRef()).toBe(false);
    batch.hincrby(key, 'n', 1, 60_000);
    await waitFor(async () => (await redis.hget(key, 'n')) === '2', 2000, 10);
    // Armed again by the next increment only.
    expect((batch as unknown as { timer?: NodeJS.Timeout }).timer).toBeUndefined();
    batch.hincrby(key, 'n', 5, 60_000);
    await waitFor(async () => (await redis.hget(key, 'n')) === '7', 2000, 10);
    await batch.close();
  });

  it('keeps the increments of a failed flush (Redis unreachable) and writes them, with those counted since, on a later flush', async () => {
    // The engine's own connection settings (fail fast while Redis is away).
    const conn = connectRedis(REDIS_URL, pino({ level: 'silent' }));
    await conn.ping();
    const log = capture();
    const batch = new CounterBatch(conn, log.logger, { flushMs: 60_000 });
    const key = k('fail');
    for (let i = 0; i < 10; i++) batch.hincrby(key, 'sent', 1, 60_000);
    conn.disconnect(); // closed: its commands fail at once
    await expect(batch.flush()).rejects.toThrow(/closed/i);
    expect(batch.pendingPairs).toBe(1);
    batch.hincrby(key, 'sent', 5, 60_000);
    batch.hincrby(key, 'rejected', 1, 60_000);
    await expect(batch.flush()).rejects.toThrow();
    // One warning for the failure streak, not one per flush; no number of anything in it but counts.
    const warned = log.lines().filter((l) => l.msg === 'could not write the counters; kept for the next flush');
    expect(warned).toHaveLength(1);
    expect(await redis.exists(key)).toBe(0);

    await conn.connect();
    await batch.flush();
    expect(await redis.hgetall(key)).toEqual({ sent: '15', rejected: '1' });
    expect(await redis.pttl(key)).toBeGreaterThan(50_000);
    expect(log.lines().some((l) => l.msg === 'counters written again')).toBe(true);
    // Written once: a later flush adds nothing.
    await batch.close();
    expect(await redis.hgetall(key)).toEqual({ sent: '15', rejected: '1' });
    await conn.quit();
  });

  it('close() writes what is pending and stops the timer', async () => {
    const batch = new CounterBatch(redis, pino({ level: 'silent' }), { flushMs: 60_000 });
    const key = k('close');
    batch.hincrby(key, 'verified', 4, 60_000);
    await batch.close();
    expect(await redis.hget(key, 'verified')).toBe('4');
    expect((batch as unknown as { timer?: NodeJS.Timeout }).timer).toBeUndefined();
    batch.hincrby(key, 'verified', 1, 60_000); // after close: no timer armed
    expect((batch as unknown as { timer?: NodeJS.Timeout }).timer).toBeUndefined();
  });

  it('holds at most maxPending distinct counters while Redis is away, and logs how many increments it dropped', async () => {
    const log = capture();
    const batch = new CounterBatch(redis, log.logger, { flushMs: 60_000, maxPending: 3 });
    const key = k('cap');
    for (const f of ['a', 'b', 'c', 'd', 'e']) batch.hincrby(key, f, 2, 60_000);
    batch.hincrby(key, 'a', 1, 60_000); // a pair already held still counts
    expect(batch.pendingPairs).toBe(3);
    await batch.close();
    expect(await redis.hgetall(key)).toEqual({ a: '3', b: '2', c: '2' });
    expect(log.lines().find((l) => l.dropped_increments !== undefined)).toMatchObject({ dropped_increments: 4, max_pending: 3 });
  });

  it('drops, with an error log, what Redis refuses inside the batch (a key of another type), and writes the rest', async () => {
    const log = capture();
    const batch = new CounterBatch(redis, log.logger, { flushMs: 60_000 });
    const [str, ok] = [k('not-a-hash'), k('fine')];
    await redis.set(str, 'x', 'EX', 60);
    batch.hincrby(str, 'n', 1, 60_000);
    batch.hincrby(ok, 'n', 2, 60_000);
    await batch.flush(); // not a failure of the flush: the refused increment is not kept for ever
    expect(batch.pendingPairs).toBe(0);
    expect(await redis.hget(ok, 'n')).toBe('2');
    expect(await redis.get(str)).toBe('x');
    expect(log.lines().find((l) => l.level === 50)).toMatchObject({ msg: 'Redis refused counter commands; those increments are lost' });
    await batch.close();
    expect(await redis.hget(ok, 'n')).toBe('2');
  });

  it("range health judges and reads its window with this process's own pending outcomes; operator reads of conversion flush first", async () => {
    const logger = pino({ level: 'silent' });
    const counters = new CounterBatch(redis, logger, { flushMs: 60_000 });
    const range = '+4419087399';
    const health = new RangeHealth({
      redis,
      keys,
      config: { enabled: true, minSample: 3, maxRejectRatio: 0.5, minConversionRatio: 0, windowSeconds: 600, conversionGraceSeconds: 60, quarantineSeconds: 60, judgeIntervalMs: 60_000 },
      ranges: [range],
      logger,
      cacheMs: 0,
      counters,
    });
    // Judged on the first outcome only (judgeIntervalMs): the others wait in the batch (the timer is a minute away).
    expect(await health.recordDial(range, { sent: true, rejected: false })).toBeUndefined();
    for (let i = 0; i < 3; i++) expect(await health.recordDial(range, { sent: false, rejected: true })).toBeUndefined();
    expect(counters.pendingPairs).toBeGreaterThan(0);
    expect(await health.stats(range)).toMatchObject({ attempts: 4, sent: 1, rejected: 3 });
    expect(await health.evaluate(range)).toBe('rejected');

    const fraud = new FraudControls({
      redis,
      keys,
      sealer: {} as Sealer,
      config: { accounts: { fieldCacheMs: 1000 } } as Config,
      events: {} as DeliveredEventSink,
      rangeHealth: health,
      logger,
    });
    expect(fraud.counters).toBe(counters); // one batch per process
    const now = Date.now();
    // (Sends are counted in Redis by the scripts that charge them, not batched: see countSent.lua.)
    await fraud.trackVerified({ country: 'GB', method: 'flash_call', cliRange: range, sentAt: now }, now);
    expect(await fraud.conversion(utcDay(now))).toMatchObject({
      'country:GB:flash_call:verified': 1,
      [`range:${range}:sent`]: 1,
      [`range:${range}:rejected`]: 3,
      [`range:${range}:verified`]: 1,
    });
    await counters.close();
  });
});
