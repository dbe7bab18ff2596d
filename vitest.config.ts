import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Integration tests start SIPp and engine processes on loopback; run files in
    // parallel but keep the pool small enough for a 2-core machine.
    pool: 'forks',
    maxWorkers: 2,
  },
});
