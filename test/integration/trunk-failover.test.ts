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

describe('trunk down, failover and back', { timeout: 45_000 }, () => {
  it('unreachable trunk fails fast, is marked down, traffic moves to the live trunk, then comes back', async () => {
    const deadPort = await findFreePort();
    const backup = await startSippUas({ scenario: 'uas-ring-cancel', calls: 10, maxLifetimeMs: 40_000 });
    sipps.push(backup);
    engine = await startTestEngine(
      testConfig({
        flash: { ringMs: 100 },
        numbers: { cliCooldownSeconds: 0 },
        sip: {
          timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 },
          trunks: [
            { name: 'primary', uri: `sip:127.0.0.1:${deadPort}`, priority: 0 },
            { name: 'backup', uri: backup.uri, priority: 1 },
          ],
          trunkHealth: { failuresToMarkDown: 2, retryAfterMs: 1500, maxRetryAfterMs: 5000 },
        },
      }),
    );
    const account = await engine.account();
    let n = 0;
    const verify = async () => {
      const t0 = performance.now();
      const r = await http(`${engine!.url}/v1/verify`, { auth: account.auth, body: { phone_number: `+4477009007${String(n++).padStart(2, '0')}` } });
      expect(r.status).toBe(201);
      const id = String(r.body.request_id);
      const rec = await waitFor(async () => {
        const h = await engine!.redis.hgetall(engine!.keys.verification(id));
        // `outcome` is written once the call is over (and its trunk's health updated).
        return h.trunk && h.outcome && (h.status === 'delivered' || h.status === 'failed') ? h : undefined;
      }, 10_000, 20);
      return { status: rec.status, reason: rec.failure_reason, trunk: rec.trunk, ms: performance.now() - t0 };
    };
    const trunkUp = async (name: string) => {
      const text = await (await fetch(`${engine!.url}/metrics`)).text();
      return new RegExp(`^flashverify_trunk_up\\{trunk="${name}"\\} (\\d)`, 'm').exec(text)?.[1];
    };
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
});
