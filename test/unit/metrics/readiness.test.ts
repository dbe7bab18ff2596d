import { describe, expect, it } from 'vitest';
import { runReadiness } from '../../../src/metrics/metrics-server.js';

describe('runReadiness', () => {
  it('reports each probe, counting throwing and hanging probes as not ready', async () => {
    const started = Date.now();
    const r = await runReadiness(
      {
        ok: () => true,
        down: async () => false,
        broken: () => {
          throw new Error('boom');
        },
        hung: () => new Promise<boolean>(() => undefined),
      },
      100,
    );
    expect(r).toEqual({ ready: false, checks: { ok: true, down: false, broken: false, hung: false } });
    expect(Date.now() - started).toBeLessThan(1000);
    expect(await runReadiness({ a: () => true, b: async () => true })).toEqual({ ready: true, checks: { a: true, b: true } });
  });
});
