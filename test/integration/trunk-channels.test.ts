import { afterEach, describe, expect, it } from 'vitest';
import { startSippUas, type SipMessage, type SippUas } from '../helpers/sipp.js';
import { http, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';

/**
 * A carrier's channel limit (`sip.trunks[].maxCalls`): the engine (api + flash worker, embedded SIP stack) places six
 * flash verifications at once on a trunk that takes two calls at a time, against a SIPp far end that rings until the
 * CANCEL. What the far end sees: never more than two calls open, and every call placed.
 */
let engine: TestEngine | undefined;
let uas: SippUas | undefined;
afterEach(async () => {
  await uas?.stop();
  await engine?.stop();
  uas = undefined;
  engine = undefined;
});

/** Most calls open at once at the far end: from its INVITE's arrival to its ACK's (after the 487). */
function mostOpen(messages: readonly SipMessage[]): number {
  const marks: { at: string; delta: number }[] = [];
  const seen = new Set<string>();
  for (const m of messages) {
    if (m.direction !== 'received' || (m.method !== 'INVITE' && m.method !== 'ACK')) continue;
    const key = `${m.method} ${m.header('call-id')}`;
    if (seen.has(key)) continue; // a retransmission
    seen.add(key);
    marks.push({ at: m.timestamp, delta: m.method === 'INVITE' ? 1 : -1 });
  }
  // SIPp's log is in arrival order; a stable sort keeps it for equal timestamps.
  marks.sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0));
  let open = 0;
  let most = 0;
  for (const m of marks) most = Math.max(most, (open += m.delta));
  return most;
}

async function placeSix(maxCalls: number | undefined): Promise<{ open: number; outcomes: string[] }> {
  uas = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'udp', calls: 6, maxLifetimeMs: 30_000 });
  engine = await startTestEngine(
    testConfig({
      flash: { ringMs: 400, ringingTimeoutMs: 3000 },
      sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri, cps: 100, ...(maxCalls !== undefined ? { maxCalls } : {}) }] },
    }),
  );
  const account = await engine.account({ balance: 5 });
  const created = await Promise.all(
    [1, 2, 3, 4, 5, 6].map((i) => http(`${engine!.url}/v1/verify`, { auth: account.auth, body: { phone_number: `+44770090010${i}`, method: 'flash_call' } })),
  );
  expect(created.map((c) => c.status)).toEqual([201, 201, 201, 201, 201, 201]);
  const outcomes = await waitFor(async () => {
    const records = await Promise.all(created.map((c) => engine!.redis.hget(engine!.keys.verification(String(c.body.request_id)), 'outcome')));
    return records.every((o) => o) ? (records as string[]) : undefined;
  }, 20_000);
  expect((await uas.waitForExit(10_000)).code).toBe(0);
  return { open: mostOpen(uas.messages()), outcomes };
}

describe('sip.trunks[].maxCalls: a carrier\'s channel limit', () => {
  it('six calls at once on a trunk of two channels: never more than two open at the far end; the others wait and are all placed', async () => {
    const { open, outcomes } = await placeSix(2);
    expect(open).toBe(2);
    expect(outcomes).toEqual(Array(6).fill('cancelled'));
    // Nobody left holding or waiting for a channel.
    const metrics = await (await fetch(`${engine!.url}/metrics`)).text();
    expect(metrics).toContain('flashverify_trunk_calls{trunk="sipp"} 0');
    expect(metrics).toContain('flashverify_trunk_calls_waiting{trunk="sipp"} 0');
  });

  it('without a cap the same six are open together (what the cap prevents)', async () => {
    const { open, outcomes } = await placeSix(undefined);
    expect(open).toBeGreaterThan(2);
    expect(outcomes).toEqual(Array(6).fill('cancelled'));
  });
});

describe('a call whose request expires while it waits for a channel', () => {
  it('is not dialled: the request expires (not swept yet: it does not wait for the sweeper), the attempt refunded', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'udp', calls: 1, maxLifetimeMs: 30_000 });
    engine = await startTestEngine(
      testConfig({
        flash: { ringMs: 2500, ringingTimeoutMs: 4000 },
        // The sweeper would expire it too; slow here, so that only the call's own check can.
        verification: { expirySweepMs: 60_000 },
        sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri, cps: 100, maxCalls: 1 }] },
      }),
    );
    const account = await engine.account({ balance: 5 });
    const holder = await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900111', method: 'flash_call' } });
    await waitFor(async () => (uas!.received().some((m) => m.method === 'INVITE') ? true : undefined), 5000, 20);
    const late = await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900112', method: 'flash_call', expiry_seconds: 1 } });
    expect([holder.status, late.status]).toEqual([201, 201]);
    const id = String(late.body.request_id);
    const record = await waitFor(async () => {
      const r = await engine!.redis.hgetall(engine!.keys.verification(id));
      return r.status === 'expired' ? r : undefined;
    }, 10_000);
    expect([record.outcome, record.cost]).toEqual(['request_ended', '0']);
    expect((await http(`${engine.url}/v1/verify/${id}`, { auth: account.auth })).body).toMatchObject({ status: 'expired' });
    // Charged for the holder's call only; the late one never reached the far end.
    await waitFor(async () => ((await engine!.redis.hget(engine!.keys.verification(String(holder.body.request_id)), 'outcome')) ? true : undefined), 10_000);
    expect((await engine.accounts.get(account.account_id)).balance).toBeCloseTo(5 - 0.004, 6);
    expect(new Set(uas.received().filter((m) => m.method === 'INVITE').map((m) => m.header('call-id'))).size).toBe(1);
  });
});

/**
 * Two worker processes' worth of engines on one Redis prefix (an api + worker, and a worker), each taking at most three
 * flash jobs at once, so both place calls: the trunk's limits hold for the two together (sip.trunkLimits: cluster,
 * the default), as the carrier counts them.
 */
describe('sip.trunkLimits: cluster — a trunk\'s limits across worker processes', () => {
  let second: TestEngine | undefined;
  afterEach(async () => {
    await second?.stop();
    second = undefined;
  });

  async function placeOnTwo(calls: number, trunk: { maxCalls?: number; cps: number }): Promise<{ invites: SipMessage[]; outcomes: string[] }> {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'udp', calls, maxLifetimeMs: 30_000 });
    const config = testConfig({
      flash: { ringMs: 400, ringingTimeoutMs: 3000 },
      worker: { flashConcurrency: 3 },
      sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri: uas.uri, ...trunk }] },
    });
    engine = await startTestEngine(config);
    second = await startTestEngine(config, 'worker');
    const account = await engine.account({ balance: 5 });
    const created = await Promise.all(
      Array.from({ length: calls }, (_, i) =>
        http(`${engine!.url}/v1/verify`, { auth: account.auth, body: { phone_number: `+4477009002${String(i).padStart(2, '0')}`, method: 'flash_call' } }),
      ),
    );
    expect(created.every((c) => c.status === 201)).toBe(true);
    const outcomes = await waitFor(async () => {
      const records = await Promise.all(created.map((c) => engine!.redis.hget(engine!.keys.verification(String(c.body.request_id)), 'outcome')));
      return records.every((o) => o) ? (records as string[]) : undefined;
    }, 30_000);
    expect((await uas.waitForExit(10_000)).code).toBe(0);
    const seen = new Set<string>();
    const invites = uas.messages().filter((m) => m.direction === 'received' && m.method === 'INVITE' && !seen.has(m.header('call-id')!) && seen.add(m.header('call-id')!));
    // Both workers placed calls: their INVITEs come from two SIP ports (Via sent-by).
    expect(new Set(invites.map((m) => /:(\d+)/.exec(m.header('via')!)?.[1])).size).toBe(2);
    return { invites, outcomes };
  }

  it('maxCalls 2: eight calls from two workers, never more than two open at the far end', async () => {
    const { outcomes } = await placeOnTwo(8, { maxCalls: 2, cps: 100 });
    expect(mostOpen(uas!.messages())).toBe(2);
    expect(outcomes).toEqual(Array(8).fill('cancelled'));
    // Both workers gave their channels back in Redis.
    await waitFor(async () => ((await engine!.redis.hlen(engine!.keys.trunkChannels('sipp'))) === 0 ? true : undefined), 5000);
  });

  it('cps 3: nine calls from two workers reach the far end at the trunk\'s rate, three at once then one every 333 ms', async () => {
    const { invites, outcomes } = await placeOnTwo(9, { cps: 3 });
    expect(outcomes).toEqual(Array(9).fill('cancelled'));
    const at = invites.map((m) => Date.parse(m.timestamp.replace(' ', 'T') + 'Z')).sort((a, b) => a - b);
    // Six after the burst of three, at 333 ms each: two seconds at least (each worker alone would have sent its share
    // in under 0.7 s).
    expect(at[8]! - at[0]!).toBeGreaterThanOrEqual(1900);
  });
});
