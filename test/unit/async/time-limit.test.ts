import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { waitAtMost, withDeadline } from '../../../src/async/time-limit.js';

/** A promise settled by hand. */
function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: Error) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

/** Where a promise stands after the pending microtasks have run. */
async function state(p: Promise<unknown>): Promise<'pending' | 'fulfilled' | 'rejected'> {
  let s: 'pending' | 'fulfilled' | 'rejected' = 'pending';
  p.then(
    () => (s = 'fulfilled'),
    () => (s = 'rejected'),
  );
  await vi.advanceTimersByTimeAsync(0);
  return s;
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('waitAtMost', () => {
  it('waits for the work while it is within the limit, then resolves true at once and leaves no timer', async () => {
    const work = deferred<string>();
    const waiting = waitAtMost(work.promise, 1000);
    await vi.advanceTimersByTimeAsync(999);
    expect(await state(waiting)).toBe('pending');
    work.resolve('done');
    expect(await state(waiting)).toBe('fulfilled');
    expect(await waiting).toBe(true);
    // A timer left running would keep a stopping process alive for the whole limit.
    expect(vi.getTimerCount()).toBe(0);
  });

  it('resolves false when the limit passes first', async () => {
    const waiting = waitAtMost(new Promise(() => undefined), 1000);
    await vi.advanceTimersByTimeAsync(999);
    expect(await state(waiting)).toBe('pending');
    await vi.advanceTimersByTimeAsync(1);
    expect(await waiting).toBe(false);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('rejects with the work’s error when it fails first, and clears the timer then too', async () => {
    const work = deferred<void>();
    const waiting = waitAtMost(work.promise, 1000);
    work.reject(new Error('boom'));
    await expect(waiting).rejects.toThrow('boom');
    expect(vi.getTimerCount()).toBe(0);
  });

  it('counts no work as done', async () => {
    expect(await waitAtMost(undefined, 1000)).toBe(true);
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe('withDeadline', () => {
  it('gives the work’s value when it is faster, without waiting for the deadline, and leaves no timer', async () => {
    const work = deferred<number>();
    const waiting = withDeadline(work.promise, 1000, () => new Error('late'));
    await vi.advanceTimersByTimeAsync(500);
    expect(await state(waiting)).toBe('pending');
    work.resolve(42);
    expect(await state(waiting)).toBe('fulfilled');
    expect(await waiting).toBe(42);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('rejects with the given error when the deadline passes first', async () => {
    const waiting = withDeadline(new Promise<number>(() => undefined), 1000, () => new RangeError('no answer within 1000 ms'));
    const failed = expect(waiting).rejects.toThrow(RangeError);
    await vi.advanceTimersByTimeAsync(1000);
    await failed;
    await expect(waiting).rejects.toThrow('no answer within 1000 ms');
    expect(vi.getTimerCount()).toBe(0);
  });

  it('passes the work’s own rejection through and clears the timer', async () => {
    const waiting = withDeadline(Promise.reject(new Error('refused')), 1000, () => new Error('late'));
    await expect(waiting).rejects.toThrow('refused');
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe('the unref option', () => {
  it('unrefs the timer only when asked', async () => {
    vi.useRealTimers();
    const spy = vi.spyOn(globalThis, 'setTimeout');
    try {
      const pending = new Promise<void>(() => undefined);
      void waitAtMost(pending, 60_000);
      void withDeadline(pending, 60_000, () => new Error('late'), { unref: true }).catch(() => undefined);
      const [kept, unrefed] = spy.mock.results.map((r) => r.value as NodeJS.Timeout);
      expect(kept?.hasRef()).toBe(true);
      expect(unrefed?.hasRef()).toBe(false);
      clearTimeout(kept);
      clearTimeout(unrefed);
    } finally {
      spy.mockRestore();
    }
  });
});
