import { describe, expect, it } from 'vitest';
import { formatFloor, parseCyclictest } from '../../../bench/lib/host-floor.js';

// The shape `cyclictest -q -m -S -i 1000 -h 30000` prints on two CPUs: one row per microsecond bucket, a column per
// thread, then the summary.
const OUTPUT = [
  '# /dev/cpu_dma_latency set to 0us',
  '000000 000000\t000000',
  '000017 029000\t028000',
  '000900 000950\t000900',
  '001000 000030\t000000',
  '001001 000012\t000002',
  '004999 000003\t000000',
  '005000 000002\t000000',
  '005001 000000\t000001',
  '029999 000000\t000000',
  '# Total: 029999 028903',
  '# Min Latencies: 00007 00006',
  '# Avg Latencies: 00017 00018',
  '# Max Latencies: 04999 31000',
  '# Histogram Overflows: 00001 00000',
  '# Histogram Overflow at cycle number:',
  '# Thread 0: 12345',
  '# Thread 1:',
].join('\n');

describe('bench host floor (cyclictest histogram)', () => {
  it('counts the wake-ups more than 1 ms and 5 ms late, overflows included, and the latest', () => {
    expect(parseCyclictest(OUTPUT)).toEqual({
      host_wakes: 29_000 + 28_000 + 950 + 900 + 30 + 12 + 2 + 3 + 2 + 1 + 1,
      // 1,000 µs is not more than 1 ms late; the overflow (beyond the last bucket) is.
      host_wakes_over_1ms: 12 + 2 + 3 + 2 + 1 + 1,
      host_wakes_over_5ms: 1 + 1,
      host_max_wake_late_ms: 31,
    });
  });

  it('says why there are no counts', () => {
    expect(formatFloor({ host_floor: 'cyclictest not run (spawn cyclictest ENOENT; apt install rt-tests)' })).toMatch(/rt-tests/);
    expect(formatFloor(parseCyclictest(OUTPUT))).toBe('58901 wake-ups, 21 more than 1 ms late, 2 more than 5 ms late, latest 31 ms');
  });
});
