import { afterEach, describe, expect, it } from 'vitest';
import type { DeepPartial } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { http, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { startSippUas, type SippUas } from '../helpers/sipp.js';

/**
 * Routing by destination (`sip.trunks[].prefixes`): a UK carrier takes the +44 numbers, a default trunk everything
 * else, each a SIPp far end; what each far end receives is what the routes say. Without a default route, a number no
 * prefix matches is never dialled: the verification fails `no_route`, refunded.
 */
let engine: TestEngine | undefined;
const sipps: SippUas[] = [];
afterEach(async () => {
  for (const s of sipps.splice(0)) await s.stop();
  await engine?.stop();
  engine = undefined;
});

async function verify(e: TestEngine, auth: string, phone: string, method: 'flash_call' | 'voice' = 'flash_call'): Promise<Record<string, string>> {
  const r = await http(`${e.url}/v1/verify`, { auth, body: { phone_number: phone, method } });
  expect(r.status).toBe(201);
  const id = String(r.body.request_id);
  return waitFor(async () => {
    const h = await e.redis.hgetall(e.keys.verification(id));
    return h.status === 'delivered' || h.status === 'failed' ? h : undefined;
  }, 15_000);
}

/** A SIPp far end that rings and takes the CANCEL, for `calls` calls; stopped after the test. */
async function farEnd(calls: number): Promise<SippUas> {
  const uas = await startSippUas({ scenario: 'uas-ring-cancel', calls, maxLifetimeMs: 30_000 });
  sipps.push(uas);
  return uas;
}

/** The engine on these trunks (fast SIP timers), with `extra` config. */
async function engineOn(trunks: NonNullable<DeepPartial<Config>['sip']>['trunks'], extra: DeepPartial<Config> = {}): Promise<TestEngine> {
  engine = await startTestEngine(testConfig({ ...extra, sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, trunks } }));
  return engine;
}

function invitedNumbers(uas: SippUas): string[] {
  return uas
    .messages()
    .filter((m) => m.direction === 'received' && m.method === 'INVITE')
    .map((m) => /^INVITE sip:(\+\d+)@/.exec(m.startLine)?.[1] ?? m.startLine);
}

describe('sip.trunks[].prefixes: calls routed by destination', () => {
  it('a +44 number goes to the UK trunk, a +33 number to the default trunk', async () => {
    const uk = await farEnd(2);
    const rest = await farEnd(1);
    // The default trunk first and of a better priority: only the route keeps +44 numbers off it.
    engine = await engineOn(
      [
        { name: 'rest', uri: rest.uri, priority: 0 },
        { name: 'uk', uri: uk.uri, priority: 1, prefixes: ['+44'] },
      ],
      { flash: { ringMs: 100 } },
    );
    const account = await engine.account();
    expect(await verify(engine, account.auth, '+447700900301')).toMatchObject({ status: 'delivered', trunk: 'uk' });
    expect(await verify(engine, account.auth, '+33612345678')).toMatchObject({ status: 'delivered', trunk: 'rest' });
    expect(await verify(engine, account.auth, '+447700900302')).toMatchObject({ status: 'delivered', trunk: 'uk' });
    await waitFor(async () => (invitedNumbers(uk).length >= 2 && invitedNumbers(rest).length >= 1 ? true : undefined), 5000);
    expect(invitedNumbers(uk)).toEqual(['+447700900301', '+447700900302']);
    expect(invitedNumbers(rest)).toEqual(['+33612345678']);
  });

  it('no default route: a number no prefix matches fails no_route, is refunded, and nothing is dialled (flash and voice)', async () => {
    const uk = await farEnd(1);
    engine = await engineOn([{ name: 'uk', uri: uk.uri, prefixes: ['+44'] }]);
    const account = await engine.account({ balance: 5 });
    const balance = async () => ((await http(`${engine!.url}/v1/balance`, { auth: account.auth, method: 'GET' })).body.balance as { amount: number }).amount;
    const before = await balance();
    for (const method of ['flash_call', 'voice'] as const) {
      const rec = await verify(engine, account.auth, '+33612345678', method);
      expect(rec).toMatchObject({ status: 'failed', failure_reason: 'no_route' });
      expect(rec.trunk).toBeUndefined();
      // Refunded: the status consumer gives the attempt back.
      await waitFor(async () => ((await balance()) === before ? true : undefined), 5000);
    }
    // No caller ID was taken for it, and the far end saw nothing.
    expect(await engine.redis.keys(`${engine.keys.prefix}:cli:*`)).toEqual([]);
    expect(invitedNumbers(uk)).toEqual([]);
    // The error line says why.
    expect(engine.logs.some((l) => l.includes('no SIP trunk routes this destination'))).toBe(true);
  });

  it('numbers.ranges[].trunks: each caller ID goes out only on a trunk its range is allowed on', async () => {
    const screening = await farEnd(3);
    const open = await farEnd(3);
    engine = await engineOn(
      [
        { name: 'screening', uri: screening.uri },
        { name: 'open', uri: open.uri },
      ],
      {
        flash: { ringMs: 100 },
        numbers: {
          ranges: [
            { prefix: '+44190873', country: 'GB', trunks: ['screening'] },
            { prefix: '+44190874', country: 'GB', trunks: ['open'] },
          ],
        },
      },
    );
    const account = await engine.account();
    for (let i = 0; i < 6; i++) expect(await verify(engine, account.auth, `+44770090040${i}`)).toMatchObject({ status: 'delivered' });
    const clis = (uas: SippUas) =>
      uas
        .messages()
        .filter((m) => m.direction === 'received' && m.method === 'INVITE')
        .map((m) => /<sip:(\+\d+)@/.exec(m.header('from') ?? '')?.[1] ?? '');
    await waitFor(async () => (clis(screening).length + clis(open).length >= 6 ? true : undefined), 5000);
    // The ranges take turns, so both carriers get calls, each only its own range's caller IDs.
    expect(clis(screening).length).toBeGreaterThan(0);
    expect(clis(open).length).toBeGreaterThan(0);
    expect(clis(screening).every((cli) => cli.startsWith('+44190873'))).toBe(true);
    expect(clis(open).every((cli) => cli.startsWith('+44190874'))).toBe(true);
  });

  it('a range whose trunks route none of the number\'s trunks is not used: no_cli, refunded, nothing dialled', async () => {
    const uk = await farEnd(1);
    engine = await engineOn(
      [
        { name: 'uk', uri: uk.uri, prefixes: ['+44'] },
        { name: 'fr', uri: 'sip:127.0.0.1:9', prefixes: ['+33'] },
      ],
      { numbers: { ranges: [{ prefix: '+3319087', country: 'FR', trunks: ['uk'] }] } },
    );
    const account = await engine.account();
    expect(await verify(engine, account.auth, '+33612345678')).toMatchObject({ status: 'failed', failure_reason: 'no_cli' });
    expect(engine.logs.some((l) => l.includes('no DID range may be presented on a trunk that routes this destination'))).toBe(true);
    expect(invitedNumbers(uk)).toEqual([]);
  });

  it('sip.trunks[].ringMs: each trunk\'s calls ring as long as its own setting says before the CANCEL', async () => {
    const quick = await farEnd(1);
    const long = await farEnd(1);
    engine = await engineOn(
      [
        { name: 'quick', uri: quick.uri, prefixes: ['+44'] },
        { name: 'long', uri: long.uri, prefixes: ['+33'], ringMs: 1200 },
      ],
      { flash: { ringMs: 100 } },
    );
    const account = await engine.account();
    expect(await verify(engine, account.auth, '+447700900601')).toMatchObject({ status: 'delivered', trunk: 'quick' });
    expect(await verify(engine, account.auth, '+33612345601')).toMatchObject({ status: 'delivered', trunk: 'long' });
    await quick.waitForExit(10_000);
    await long.waitForExit(10_000);
    // From the 180 SIPp sent to the CANCEL it received.
    const ringing = (uas: SippUas) => {
      const at = (pred: (m: ReturnType<SippUas['messages']>[number]) => boolean) => Date.parse(uas.messages().find(pred)!.timestamp.replace(' ', 'T') + 'Z');
      return at((m) => m.direction === 'received' && m.method === 'CANCEL') - at((m) => m.direction === 'sent' && m.status === 180);
    };
    expect(ringing(quick)).toBeLessThan(900);
    expect(ringing(long)).toBeGreaterThanOrEqual(1150);
  });
});
