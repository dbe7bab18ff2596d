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

  it('a rate below one a second: one in any 1 / rate seconds (never starved)', async () => {
    vi.useFakeTimers();
    let now = 0;
    const w = new TpsWindow(0.5, () => now);
    let done = 0;
    for (let i = 0; i < 3; i++) void w.take().then(() => done++);
    await vi.advanceTimersByTimeAsync(0);
    expect(done).toBe(1);
    now = 1999;
    await vi.advanceTimersByTimeAsync(1999);
    expect(done).toBe(1);
    now = 2000;
    await vi.advanceTimersByTimeAsync(1);
    expect(done).toBe(2);
    now = 4000;
    await vi.advanceTimersByTimeAsync(2000);
    expect(done).toBe(3);
    vi.useRealTimers();
  });
});
