import { afterEach, describe, expect, it } from 'vitest';
import { http, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { startSippUas, type SippUas } from '../helpers/sipp.js';

/**
 * The events stream loses its consumer groups while the engine runs: Redis
 * restarted without its data (no AOF/RDB), a FLUSHALL in a test environment,
 * an operator's XGROUP DESTROY. The consumers create their groups again and
 * carry on: a verification created afterwards still becomes `delivered`
 * (status group), without restarting the worker.
 */
let engine: TestEngine | undefined;
let uas: SippUas | undefined;
afterEach(async () => {
  await uas?.stop();
  await engine?.stop();
  engine = uas = undefined;
});

describe('events consumer groups lost while running', { timeout: 40_000 }, () => {
  it('are created again; statuses follow events as before', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 2, maxLifetimeMs: 35_000 });
    engine = await startTestEngine(
      testConfig({
        flash: { ringMs: 200 },
        numbers: { cliCooldownSeconds: 0 },
        sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] },
      }),
    );
    const account = await engine.account();
    const status = async (id: string) => (await http(`${engine!.url}/v1/verify/${id}`, { auth: account.auth })).body.status;
    const first = await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900301' } });
    expect(first.status).toBe(201);
    await waitFor(async () => (await status(String(first.body.request_id))) === 'delivered', 10_000, 100);

    // The stream and its groups vanish, as after a restart of a Redis that keeps nothing on disk.
    await engine.redis.del(engine.keys.events());
    const second = await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900302' } });
    expect(second.status).toBe(201);
    await waitFor(async () => (await status(String(second.body.request_id))) === 'delivered', 15_000, 100);

    const groups = (await engine.redis.xinfo('GROUPS', engine.keys.events())) as unknown[][];
    const names = groups.map((g) => String(g[g.indexOf('name') + 1]));
    expect(names).toEqual(expect.arrayContaining([engine.config.events.consumerGroup, engine.config.events.webhookGroup]));
    expect(engine.logs.join('\n')).toContain('events consumer group missing');
  });
});
