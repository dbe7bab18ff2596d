import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { http, waitFor } from '../helpers/engine.js';
import { engineCluster, type EngineCluster } from '../helpers/engine-process.js';
import { ownRedis, type OwnRedis } from '../helpers/redis-server.js';
import { startSippUas, type SippUas } from '../helpers/sipp.js';

/**
 * `redis.url: unix:///path/redis.sock`: api and worker processes talk to a
 * Redis on the same host over its Unix socket (BENCHMARKS.md measures it
 * against loopback TCP). The whole flow works over it: ready, 201, the flash
 * call to SIPp, `delivered`; and the records are in that Redis (read back
 * over its TCP port too, so the socket is not some other server).
 */
let redis: OwnRedis | undefined;
let cluster: EngineCluster | undefined;
let uas: SippUas | undefined;
afterEach(async () => {
  await uas?.stop();
  await cluster?.cleanup();
  await redis?.cleanup();
  uas = cluster = redis = undefined;
});

describe('Redis over its Unix socket', { timeout: 60_000 }, () => {
  it('serves, delivers and stores through unix:// exactly as through redis://', async () => {
    redis = await ownRedis();
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 3, maxLifetimeMs: 50_000 });
    cluster = await engineCluster(
      {
        flash: { ringMs: 200 },
        numbers: { cliCooldownSeconds: 0 },
        sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] },
      },
      { redisUrl: redis.socketUrl },
    );
    expect(cluster.redisUrl).toMatch(/^unix:\/\/\/.+redis\.sock$/);
    await cluster.start('api');
    await cluster.start('worker');
    const ready = await http(`${cluster.httpUrl}/readyz`);
    expect(ready.status).toBe(200);

    const { auth } = await cluster.account(10);
    const ids: string[] = [];
    for (const phone of ['+447700900101', '+447700900102', '+447700900103']) {
      const r = await http(`${cluster.httpUrl}/v1/verify`, { auth, body: { phone_number: phone } });
      expect(r.status).toBe(201);
      ids.push(String(r.body.request_id));
    }
    for (const id of ids) {
      await waitFor(async () => (await http(`${cluster!.httpUrl}/v1/verify/${id}`, { auth })).body.status === 'delivered', 20_000, 100);
    }

    // The same records, read over the server's TCP port: the engine used this Redis, over its socket.
    const tcp = new Redis(redis.url, { maxRetriesPerRequest: 1 });
    try {
      for (const id of ids) expect(await tcp.hget(cluster.keys.verification(id), 'status')).toBe('delivered');
      // Every connection but this test's own TCP one came in over the socket (flags=U, addr "<path>:0").
      const others = String(await tcp.client('LIST'))
        .split('\n')
        .filter((l) => l.includes(' addr=') && !l.includes('cmd=client|list'));
      expect(others.length).toBeGreaterThan(2);
      expect(others.filter((l) => !/ flags=[a-zA-Z]*U /.test(l))).toEqual([]);
    } finally {
      tcp.disconnect();
    }
  });
});
