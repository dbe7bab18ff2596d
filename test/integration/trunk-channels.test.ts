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
