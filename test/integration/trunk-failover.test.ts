import { afterEach, describe, expect, it } from 'vitest';
import { http, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { findFreePort, startSippUas, type SippUas } from '../helpers/sipp.js';

/**
 * Two trunks: `primary` points at a port nobody listens on (ICMP port
 * unreachable on UDP), `backup` at a SIPp far end. Calls to the primary fail
 * fast with `unreachable`; after `failuresToMarkDown` of them it is marked
 * down (flashverify_trunk_up 0) and traffic moves to the backup. Once a far
 * end listens on the primary's port again, the probe after the back-off finds
 * it alive and traffic returns to it.
 */
let engine: TestEngine | undefined;
const sipps: SippUas[] = [];
afterEach(async () => {
  for (const s of sipps.splice(0)) await s.stop();
  await engine?.stop();
  engine = undefined;
});

/** Creates a flash verification and waits for the end of its call: status, failure reason, trunk, time taken. */
function verifier(e: TestEngine, auth: string) {
  let n = 0;
  return async () => {
    const t0 = performance.now();
    const r = await http(`${e.url}/v1/verify`, { auth, body: { phone_number: `+4477009007${String(n++).padStart(2, '0')}` } });
    expect(r.status).toBe(201);
    const id = String(r.body.request_id);
    const rec = await waitFor(async () => {
      const h = await e.redis.hgetall(e.keys.verification(id));
      // `outcome` is written once the call is over (and its trunk's health updated).
      return h.trunk && h.outcome && (h.status === 'delivered' || h.status === 'failed') ? h : undefined;
    }, 15_000, 20);
    return { status: rec.status, reason: rec.failure_reason, trunk: rec.trunk, ms: performance.now() - t0 };
  };
}

async function trunkGauge(e: TestEngine, name: string): Promise<string | undefined> {
  const text = await (await fetch(`${e.url}/metrics`)).text();
  return new RegExp(`^flashverify_trunk_up\\{trunk="${name}"\\} (\\d)`, 'm').exec(text)?.[1];
}

/**
 * primary (priority 0) at `primaryUri`, backup (priority 1) a SIPp far end; marked down after `failuresToMarkDown` (2)
 * failures. Route advance off unless asked: these tests watch a trunk's health through the calls that fail on it.
 */
async function twoTrunks(primaryUri: string, t1Ms: number, opts: { routeAdvance?: boolean; failuresToMarkDown?: number } = {}): Promise<{ e: TestEngine; backup: SippUas }> {
  const backup = await startSippUas({ scenario: 'uas-ring-cancel', calls: 10, maxLifetimeMs: 40_000 });
  sipps.push(backup);
  const e = await startTestEngine(
    testConfig({
      flash: { ringMs: 100 },
      numbers: { cliCooldownSeconds: 0 },
      sip: {
        routeAdvance: opts.routeAdvance ?? false,
        timers: { t1Ms, t2Ms: 4 * t1Ms, t4Ms: 5 * t1Ms },
        trunks: [
          { name: 'primary', uri: primaryUri, priority: 0 },
          { name: 'backup', uri: backup.uri, priority: 1 },
        ],
        trunkHealth: { failuresToMarkDown: opts.failuresToMarkDown ?? 2, retryAfterMs: 1500, maxRetryAfterMs: 5000 },
      },
    }),
  );
  return { e, backup };
}

describe('trunk down, failover and back', { timeout: 45_000 }, () => {
  it('unreachable trunk fails fast, is marked down, traffic moves to the live trunk, then comes back', async () => {
    const deadPort = await findFreePort();
    engine = (await twoTrunks(`sip:127.0.0.1:${deadPort}`, 100)).e;
    const account = await engine.account();
    const verify = verifier(engine, account.auth);
    const trunkUp = (name: string) => trunkGauge(engine!, name);
    expect(await trunkUp('primary')).toBe('1');

    // Primary unreachable: fails fast (no Timer B wait), twice, then it is down.
    for (let i = 0; i < 2; i++) {
      const r = await verify();
      expect(r).toMatchObject({ status: 'failed', reason: 'unreachable', trunk: 'primary' });
      expect(r.ms).toBeLessThan(2000);
    }
    expect(await trunkUp('primary')).toBe('0');
    // Traffic moves to the backup.
    for (let i = 0; i < 3; i++) expect(await verify()).toMatchObject({ status: 'delivered', trunk: 'backup' });

    // The primary comes back; after the back-off the probe call finds it and traffic returns.
    const revived = await startSippUas({ scenario: 'uas-ring-cancel', calls: 5, port: deadPort, maxLifetimeMs: 40_000 });
    sipps.push(revived);
    await new Promise((r) => setTimeout(r, 1600));
    for (let i = 0; i < 2; i++) expect(await verify()).toMatchObject({ status: 'delivered', trunk: 'primary' });
    expect(await trunkUp('primary')).toBe('1');
    expect(revived.requests('INVITE').length).toBeGreaterThanOrEqual(2);
    expect(engine.logs.join('\n')).toMatch(/trunk down; retried after back-off[\s\S]*trunk answers again/);
  });

  it.each([
    { title: 'TCP connection refused', reason: 'unreachable', t1Ms: 100, fastMs: 2000 },
    { title: 'a silent trunk (INVITEs swallowed, no ICMP, no response)', reason: 'timeout', t1Ms: 50, fastMs: 64 * 50 + 1500 },
  ])('$title: calls fail `$reason`, the trunk is marked down, traffic moves to the live trunk', async ({ title, reason, t1Ms, fastMs }) => {
    let primaryUri: string;
    let silent: SippUas | undefined;
    if (title.startsWith('TCP')) primaryUri = `sip:127.0.0.1:${await findFreePort()};transport=tcp`;
    else {
      // SIPp receives every INVITE and never answers: only Timer B (64 x T1) ends the call.
      silent = await startSippUas({ scenario: 'uas-no-response', calls: 2, maxLifetimeMs: 40_000, vars: { hold_ms: 64 * t1Ms + 3000 } });
      sipps.push(silent);
      primaryUri = silent.uri;
    }
    const { e, backup } = await twoTrunks(primaryUri, t1Ms);
    engine = e;
    const account = await e.account();
    const verify = verifier(e, account.auth);
    for (let i = 0; i < 2; i++) {
      const r = await verify();
      expect(r).toMatchObject({ status: 'failed', reason, trunk: 'primary' });
      expect(r.ms).toBeLessThan(fastMs);
    }
    expect(await trunkGauge(e, 'primary')).toBe('0');
    for (let i = 0; i < 3; i++) expect(await verify()).toMatchObject({ status: 'delivered', trunk: 'backup' });
    expect(backup.requests('INVITE').length).toBe(3);
    // The silent trunk got exactly the two calls that failed on it, nothing after it was marked down.
    if (silent) expect(new Set(silent.requests('INVITE').map((m) => m.header('call-id'))).size).toBe(2);
    expect(e.logs.join('\n')).toMatch(/trunk down; retried after back-off/);
  });

  it('a trunk answering 503 to every call (out of capacity, in maintenance: sip.trunkHealth.failureStatuses) is marked down; traffic moves to the live trunk', async () => {
    const unavailable = await startSippUas({ scenario: 'uas-service-unavailable-503', calls: 2, maxLifetimeMs: 40_000 });
    sipps.push(unavailable);
    const { e, backup } = await twoTrunks(unavailable.uri, 100);
    engine = e;
    const account = await e.account();
    const verify = verifier(e, account.auth);
    for (let i = 0; i < 2; i++) expect(await verify()).toMatchObject({ status: 'failed', reason: 'rejected', trunk: 'primary' });
    expect(await trunkGauge(e, 'primary')).toBe('0');
    for (let i = 0; i < 2; i++) expect(await verify()).toMatchObject({ status: 'delivered', trunk: 'backup' });
    // The 503 trunk got exactly the two calls it refused; its release cause (Reason: Q.850;cause=34) is in each.
    expect(new Set(unavailable.requests('INVITE').map((m) => m.header('call-id'))).size).toBe(2);
    const failed = e.logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['msg'] === 'SIP call failed');
    expect(failed.map((l) => [l['status'], l['q850_cause'], l['q850_text']])).toEqual([
      [503, 34, 'No circuit/channel available'],
      [503, 34, 'No circuit/channel available'],
    ]);
    expect(backup.requests('INVITE').length).toBe(2);
    expect(e.logs.join('\n')).toMatch(/trunk down; retried after back-off/);
  });

  it.each([
    { title: 'answers 503', reason: 'sip_503' },
    { title: 'is unreachable (ICMP port unreachable)', reason: 'unreachable' },
  ])('route advance: a call its trunk refused before it rang ($title) is placed again on the next trunk and delivered there, in the same verification', async ({ reason }) => {
    let primaryUri: string;
    let refusing: SippUas | undefined;
    if (reason === 'sip_503') {
      refusing = await startSippUas({ scenario: 'uas-service-unavailable-503', calls: 2, maxLifetimeMs: 40_000 });
      sipps.push(refusing);
      primaryUri = refusing.uri;
    } else primaryUri = `sip:127.0.0.1:${await findFreePort()}`;
    // Not marked down after one or two failures: each verification meets the refusing trunk first.
    const { e, backup } = await twoTrunks(primaryUri, 100, { routeAdvance: true, failuresToMarkDown: 5 });
    engine = e;
    const account = await e.account();
    const verify = verifier(e, account.auth);
    for (let i = 0; i < 2; i++) {
      const r = await verify();
      expect(r).toMatchObject({ status: 'delivered', trunk: 'backup' });
      expect(r.ms).toBeLessThan(3000);
    }
    if (refusing) expect(new Set(refusing.requests('INVITE').map((m) => m.header('call-id'))).size).toBe(2);
    expect(backup.requests('INVITE').length).toBe(2);
    const lines = e.logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['msg'] === 'trunk refused the call before it rang; placed again on the next trunk');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatchObject({ trunk: 'primary', next_trunk: 'backup', reason });
    const metrics = await (await fetch(`${e.url}/metrics`)).text();
    expect(metrics).toContain(`flashverify_route_advances_total{method="flash_call",trunk="primary",reason="${reason}"} 2`);
    // The refusing trunk's calls still count for its health: two failures of five.
    expect(await trunkGauge(e, 'primary')).toBe('1');
  });
});
