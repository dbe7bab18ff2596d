import { describe, expect, it } from 'vitest';
import { OpenLoopSchedule } from '../../../bench/lib/schedule.js';
import { linearFit, percentile, summarize, Tally } from '../../../bench/lib/stats.js';

describe('bench percentiles (nearest rank)', () => {
  it('p50/p99/max of 1..100 are samples 50, 99 and 100', () => {
    const s = summarize(Array.from({ length: 100 }, (_, i) => 100 - i));
    expect(s).toMatchObject({ count: 100, p50: 50, p90: 90, p99: 99, max: 100 });
    expect(s.mean).toBeCloseTo(50.5);
  });

  it('one sample is every percentile; no samples give NaN', () => {
    expect(summarize([7])).toMatchObject({ p50: 7, p99: 7, max: 7 });
    expect(Number.isNaN(summarize([]).p99)).toBe(true);
  });

  it('a single outlier in 100 samples is the max, not the p99', () => {
    const xs = [...Array.from({ length: 99 }, () => 1), 500];
    expect(percentile(Float64Array.from(xs).sort(), 0.99)).toBe(1);
    expect(summarize(xs).max).toBe(500);
  });
});

describe('bench open-loop schedule', () => {
  it('hands out requests by due time, whatever happened before', () => {
    const s = new OpenLoopSchedule(1000, 1, 1_000_000);
    expect(s.total).toBe(1000);
    expect(s.take(0)).toEqual({ from: 0, to: 1 });
    // a 10 ms stall: the 10 requests due meanwhile all leave at once (and are charged the wait)
    expect(s.take(10)).toEqual({ from: 1, to: 11 });
    expect(s.dueMs(5)).toBe(5);
    expect(s.waitMs(10)).toBeCloseTo(1);
    expect(s.take(5000)).toEqual({ from: 11, to: 1000 });
    expect(s.done).toBe(true);
  });

  it('caps the request count', () => {
    expect(new OpenLoopSchedule(5000, 600, 100_000).total).toBe(100_000);
  });
});

describe('bench helpers', () => {
  it('linearFit finds bytes per call', () => {
    const calls = [0, 1000, 2000, 3000];
    const fit = linearFit(calls, calls.map((c) => 50e6 + 200 * c));
    expect(fit.slope).toBeCloseTo(200);
    expect(fit.r2).toBeCloseTo(1);
  });

  it('Tally counts failures by kind, most frequent first', () => {
    const t = new Tally();
    t.add('timeout');
    t.add('http_503 service_unavailable', 3);
    expect(t.total).toBe(4);
    expect(t.toString()).toBe('http_503 service_unavailable: 3, timeout: 1');
  });
});
