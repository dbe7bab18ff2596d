import { describe, expect, it, vi } from 'vitest';
import { TokenBucket } from '../../../src/engine/token-bucket.js';

describe('TokenBucket', () => {
  it('lets a second of CPS through at once, then paces', async () => {
    vi.useFakeTimers();
    let now = 0;
    const b = new TokenBucket(5, () => now);
    let done = 0;
    for (let i = 0; i < 8; i++) void b.take().then(() => done++);
    await vi.advanceTimersByTimeAsync(0);
    expect(done).toBe(5);
    now = 200;
    await vi.advanceTimersByTimeAsync(200);
    expect(done).toBe(6);
    now = 600;
    await vi.advanceTimersByTimeAsync(400);
    expect(done).toBe(8);
    vi.useRealTimers();
  });

  it('a rate below one a second: one at once, then one every 1 / rate seconds (never starved)', async () => {
    vi.useFakeTimers();
    let now = 0;
    const b = new TokenBucket(0.5, () => now);
    let done = 0;
    for (let i = 0; i < 3; i++) void b.take().then(() => done++);
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
