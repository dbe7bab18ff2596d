import { describe, expect, it, vi } from 'vitest';
import type { TrunkConfig } from '../../../src/config/schema.js';
import { TrunkPacer } from '../../../src/engine/trunk-pacer.js';

const trunk = (name: string, cps: number) =>
  ({ name, uri: 'sip:127.0.0.1', cps, ringOn183: false, dummySdp: false, headers: {} }) as TrunkConfig;

describe('TrunkPacer', () => {
  it('gives every channel of the process one CPS budget per trunk', async () => {
    vi.useFakeTimers();
    const a = trunk('a', 2);
    const pacer = new TrunkPacer([a, trunk('b', 2)]);
    expect(pacer.pick()).toBe(a);
    let done = 0;
    // Two "flash" takes and one "voice" take on the same trunk: the third waits.
    for (let i = 0; i < 3; i++) void pacer.take(a).then(() => done++);
    await vi.advanceTimersByTimeAsync(0);
    expect(done).toBe(2);
    // Another trunk has its own budget.
    void pacer.take(trunk('b', 2)).then(() => done++);
    await vi.advanceTimersByTimeAsync(0);
    expect(done).toBe(3);
    await vi.advanceTimersByTimeAsync(600);
    expect(done).toBe(4);
    vi.useRealTimers();
  });
});
