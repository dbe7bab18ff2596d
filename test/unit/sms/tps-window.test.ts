import { describe, expect, it, vi } from 'vitest';
import { TpsWindow } from '../../../src/sms/tps-window.js';

describe('TpsWindow', () => {
  it('never more than tps in any one second: an idle bind sends tps at once, the next as the first of them is a second old', async () => {
    vi.useFakeTimers();
    let now = 10_000;
    const w = new TpsWindow(5, () => now);
    const at: number[] = [];
    for (let i = 0; i < 12; i++) void w.take().then(() => at.push(now));
    await vi.advanceTimersByTimeAsync(0);
    expect(at).toHaveLength(5);
    // A token bucket of a second's worth let a sixth go at +200 ms: six in one second.
    now += 999;
    await vi.advanceTimersByTimeAsync(999);
    expect(at).toHaveLength(5);
    now += 1;
    await vi.advanceTimersByTimeAsync(1);
    expect(at).toHaveLength(10);
    now += 1000;
    await vi.advanceTimersByTimeAsync(1000);
    expect(at).toHaveLength(12);
    for (const start of at) expect(at.filter((t) => t >= start && t < start + 1000).length).toBeLessThanOrEqual(5);
    vi.useRealTimers();
  });

  it('a fractional tps above one holds to its whole part in every second (2.5: never 3)', async () => {
    vi.useFakeTimers();
    let now = 0;
    const w = new TpsWindow(2.5, () => now);
    const at: number[] = [];
    for (let i = 0; i < 7; i++) void w.take().then(() => at.push(now));
    for (let ms = 0; ms <= 4000; ms += 100) {
      now = ms;
      await vi.advanceTimersByTimeAsync(ms === 0 ? 0 : 100);
    }
    expect(at).toEqual([0, 0, 1000, 1000, 2000, 2000, 3000]);
    vi.useRealTimers();
  });

  it('a rate below one a second: one in any 1 / rate seconds (never starved)', async () => {
    vi.useFakeTimers();
    let now = 0;
    const w = new TpsWindow(0.25, () => now);
    const at: number[] = [];
    for (let i = 0; i < 3; i++) void w.take().then(() => at.push(now));
    // Step through 12 s a second at a time: one now, one at 4 s, one at 8 s.
    for (let s = 0; s <= 12; s++) {
      now = s * 1000;
      await vi.advanceTimersByTimeAsync(s === 0 ? 0 : 1000);
    }
    expect(at).toEqual([0, 4000, 8000]);
    vi.useRealTimers();
  });
});
