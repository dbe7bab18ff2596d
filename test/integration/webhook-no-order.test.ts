import { afterEach, describe, expect, it } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import { http, readEvents, REDIS_URL, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { monitorRedis, type RedisMonitor } from '../helpers/redis-monitor.js';
import { startSippUas, type SippUas } from '../helpers/sipp.js';
import { Receiver } from '../helpers/webhook-receiver.js';

/**
 * A request of an account without a webhook URL has no webhook order set: its events say so (`nowq 1`, written by the
 * script that writes each event), and the webhook consumer issues no command for them (it used to mark each one done
 * in a set that does not exist). An account with a URL: no `nowq`, its events are marked in its set and delivered.
 */
let engine: TestEngine | undefined;
let uas: SippUas | undefined;
let monitor: RedisMonitor | undefined;
const hooks = new Receiver();
afterEach(async () => {
  monitor?.disconnect();
  await uas?.stop();
  await engine?.stop();
  await hooks.stop();
  engine = undefined;
});

describe('webhook order sets only where webhooks go', () => {
  it('events of an account without a URL carry nowq and cost the webhook consumer nothing; with a URL, as before', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 2, maxLifetimeMs: 30_000 });
    const hookUrl = await hooks.start();
    engine = await startTestEngine(
      testConfig({
        flash: { ringMs: 100 },
        webhooks: { allowPrivate: true },
        sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri }] },
      }),
    );
    const commands: string[][] = [];
    const prefix = engine.keys.prefix;
    monitor = await monitorRedis(REDIS_URL, (args) => {
      if (args.slice(1).some((a) => a.startsWith(`${prefix}:whq:`))) commands.push(args);
    });
    const silent = await engine.account();
    const hooked = await engine.account();
    await new AccountStore(engine.redis, engine.keys, engine.sealer, { allowPrivateWebhooks: true }).setWebhook(hooked.account_id, hookUrl);

    const delivered = async (auth: string, phone: string) => {
      const r = await http(`${engine!.url}/v1/verify`, { auth, body: { phone_number: phone } });
      expect(r.status).toBe(201);
      const id = String(r.body.request_id);
      await waitFor(async () => ((await engine!.redis.hget(engine!.keys.verification(id), 'outcome')) ? true : undefined), 10_000);
      return id;
    };
    const quiet = await delivered(silent.auth, '+447700900801');
    const loud = await delivered(hooked.auth, '+447700900802');
    await waitFor(async () => (hooks.forRequest(loud).some((h) => h.json.status === 'delivered') ? true : undefined), 5000);
    // The consumers have handled every event by now (the hooked request's delivered webhook went out after its sent one).
    await waitFor(async () => ((await engine!.redis.zscore(engine!.keys.webhookOrder(loud), await lastMember(loud))) === '1' ? true : undefined), 5000);

    const events = await readEvents(engine.redis, engine.keys);
    const of = (id: string) => events.filter((e) => e.request_id === id);
    expect(of(quiet).map((e) => [e.status, e.nowq])).toEqual([
      ['sent', '1'],
      ['delivered', '1'],
    ]);
    expect(of(loud).map((e) => [e.status, e.nowq])).toEqual([
      ['sent', undefined],
      ['delivered', undefined],
    ]);
    expect(await engine.redis.exists(engine.keys.webhookOrder(quiet))).toBe(0);
    // Not one command on the quiet request's (absent) order set (MONITOR also shows a script's own commands, and the
    // scripts that write events name the key: only commands on the set itself count); the hooked one's is written
    // and marked.
    const onSet = (id: string) => commands.filter((c) => c[0]!.startsWith('z') && c[1] === engine!.keys.webhookOrder(id));
    expect(onSet(quiet)).toEqual([]);
    expect(onSet(loud).length).toBeGreaterThan(0);
    expect(hooks.forRequest(quiet)).toEqual([]);
  });
});

/** The order set's last member (the request's latest event). */
async function lastMember(id: string): Promise<string> {
  const members = await engine!.redis.zrange(engine!.keys.webhookOrder(id), 0, -1);
  return members[members.length - 1] ?? '';
}
