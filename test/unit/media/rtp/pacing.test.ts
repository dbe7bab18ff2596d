import { describe, expect, it } from 'vitest';
import { delayUntil, dueTime, dueUpTo, runPaced, type PacingClock } from '../../../../src/media/rtp/pacing.js';

/** A manual clock: timers fire when the test advances time, optionally late. */
class ManualClock implements PacingClock {
  t = 1000;
  private timers: { at: number; fn: () => void; id: number }[] = [];
  private nextId = 1;
  /** Extra lateness added to the next timer that fires (a busy event loop). */
  lateness: number[] = [];
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.timers.push({ at: this.t + ms, fn, id });
    return id;
  }
  clearTimeout(h: unknown): void {
    this.timers = this.timers.filter((x) => x.id !== h);
  }
  /** Fires timers in order until none is left or `until` is reached. */
  run(until = Infinity): void {
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at);
      const next = this.timers.shift();
      if (!next || next.at > until) {
        if (next) this.timers.unshift(next);
        return;
      }
      this.t = Math.max(this.t, next.at + (this.lateness.shift() ?? 0));
      next.fn();
    }
  }
}

describe('pacing schedule math', () => {
  it('computes each due time from the start, not from the previous send', () => {
    expect(dueTime(1000, 20, 0)).toBe(1000);
    expect(dueTime(1000, 20, 150)).toBe(4000);
    expect(delayUntil(1000, 20, 3, 1047)).toBe(13);
    expect(delayUntil(1000, 20, 3, 1075)).toBe(0);
  });

  it('reports every packet already due, capped at the stream length', () => {
    expect(dueUpTo(1000, 20, 0, 10, 1000)).toBe(1);
    expect(dueUpTo(1000, 20, 1, 10, 1019.9)).toBe(1);
    expect(dueUpTo(1000, 20, 1, 10, 1020)).toBe(2);
    expect(dueUpTo(1000, 20, 2, 10, 1101)).toBe(6);
    expect(dueUpTo(1000, 20, 6, 10, 5000)).toBe(10);
  });
});

describe('runPaced', () => {
  it('sends packet i at start + 20·i with no accumulated drift on a punctual clock', () => {
    const clock = new ManualClock();
    const sentAt: number[] = [];
    let completed: boolean | undefined;
    runPaced({ count: 50, periodMs: 20, clock, send: () => sentAt.push(clock.now()), done: (c) => (completed = c) });
    clock.run();
    expect(sentAt).toEqual(Array.from({ length: 50 }, (_, i) => 1000 + 20 * i));
    expect(completed).toBe(true);
  });

  it('catches up after a late wake-up instead of shifting every later packet', () => {
    const clock = new ManualClock();
    const sends: { index: number; at: number; late: number }[] = [];
    // every wake-up is 1 ms late (timer granularity) and the 5th one 65 ms late (GC pause)
    clock.lateness = [1, 1, 1, 1, 65, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
    runPaced({ count: 20, periodMs: 20, clock, send: (index, late) => sends.push({ index, at: clock.now(), late }), done: () => undefined });
    clock.run();
    expect(sends.map((s) => s.index)).toEqual(Array.from({ length: 20 }, (_, i) => i));
    // Packet 5 was due at 1100 but the loop woke at 1165: 5, 6, 7 and 8 go out together.
    expect(sends.filter((s) => s.at === 1165).map((s) => s.index)).toEqual([5, 6, 7, 8]);
    // After it, the schedule is back on the original grid (plus the 1 ms timer lateness), not 65 ms behind.
    expect(sends[19]!.at).toBe(1000 + 19 * 20 + 1);
    for (const s of sends) expect(s.late).toBeCloseTo(s.at - (1000 + 20 * s.index));
  });

  it('stops at once when asked and reports an incomplete stream', () => {
    const clock = new ManualClock();
    let sent = 0;
    let completed: boolean | undefined;
    const stop = runPaced({ count: 100, periodMs: 20, clock, send: () => void sent++, done: (c) => (completed = c) });
    clock.run(1000 + 20 * 9);
    stop();
    clock.run();
    expect(sent).toBe(10);
    expect(completed).toBe(false);
  });
});
