import { createSocket } from 'node:dgram';
import { afterEach, describe, expect, it } from 'vitest';
import type { DeepPartial } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { FakeDrachtioServer } from '../fakes/drachtio-server.js';
import { startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { findFreePort, startSippUas, type SippUas } from '../helpers/sipp.js';

/**
 * OPTIONS keep-alive pings from a worker to its trunks (sip.trunkHealth.optionsPingMs, sip.trunks[].optionsPingMs),
 * on the embedded stack with SIPp as the trunk (sip-test/uas-options.xml, uas-options-405.xml) or nothing at all
 * listening on the trunk's port, and on the drachtio backend with the fake drachtio-server (test/fakes/). What an
 * operator sees: the OPTIONS on the wire, flashverify_trunk_up and
 * flashverify_trunk_pings_total on /metrics, the warn/info lines when a trunk goes down and comes back, and no
 * call spent on any of it.
 */
const PING_MS = 200;
let engine: TestEngine | undefined;
const sipps: SippUas[] = [];
afterEach(async () => {
  // The engine first: no ping then goes to a trunk that is stopping.
  await engine?.stop();
  engine = undefined;
  await Promise.all(sipps.splice(0).map((s) => s.stop()));
});

async function sippTrunk(scenario: 'uas-options' | 'uas-options-405', port?: number, transport: 'udp' | 'tcp' = 'udp'): Promise<SippUas> {
  // One SIPp call per ping (each has its own Call-ID).
  const s = await startSippUas({ scenario, transport, calls: 1000, maxLifetimeMs: 40_000, ...(port === undefined ? {} : { port }) });
  sipps.push(s);
  return s;
}

async function start(sip: DeepPartial<Config['sip']>): Promise<TestEngine> {
  engine = await startTestEngine(testConfig({ sip: { timers: { t1Ms: 100, t2Ms: 400, t4Ms: 500 }, ...sip } }));
  return engine;
}

/** One sample of /metrics: the value of the `name` series with all these labels, undefined when it is absent. */
async function metric(e: TestEngine, name: string, labels: string[]): Promise<number | undefined> {
  const text = await (await fetch(`${e.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && labels.every((x) => l.includes(x)));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}
const trunkUp = (e: TestEngine, trunk: string) => metric(e, 'flashverify_trunk_up', [`trunk="${trunk}"`]);
const pings = (e: TestEngine, trunk: string, result: string) => metric(e, 'flashverify_trunk_pings_total', [`trunk="${trunk}"`, `result="${result}"`]);
/** No INVITE left the engine for `trunk`: no calls_started series for it. */
const callsStarted = (e: TestEngine, trunk: string) => metric(e, 'flashverify_calls_started_total', [`trunk="${trunk}"`]);

describe('OPTIONS keep-alive pings to trunks', { timeout: 30_000 }, () => {
  it('pings a live trunk every interval with the headers of an out-of-dialog OPTIONS; it stays up, no call is placed', async () => {
    const sipp = await sippTrunk('uas-options');
    const e = await start({
      trunks: [{ name: 'carrier', uri: sipp.uri, fromDomain: 'cli.example.net', headers: { 'X-Account': 'acme' }, auth: { username: 'u', password: 'p' } }],
      trunkHealth: { optionsPingMs: PING_MS },
    });
    await sipp.waitForMessage((m) => m.direction === 'received' && m.method === 'OPTIONS', 5000);
    await new Promise((r) => setTimeout(r, 5 * PING_MS));
    const options = sipp.requests('OPTIONS');
    // About one per interval (the first at start): not a burst, not one only.
    expect(options.length).toBeGreaterThanOrEqual(4);
    expect(options.length).toBeLessThanOrEqual(9);
    expect(new Set(options.map((m) => m.header('call-id'))).size).toBe(options.length);
    const port = e.engine.sipPort;
    for (const m of options) {
      // RFC 3261 11.1: Request-URI and To the trunk's address (no user part), CSeq of its own, Accept.
      expect(m.startLine).toBe(`OPTIONS sip:127.0.0.1:${sipp.port} SIP/2.0`);
      expect(m.header('to')).toBe(`<sip:127.0.0.1:${sipp.port}>`);
      expect(m.header('from')).toMatch(/^<sip:flashverify@cli\.example\.net>;tag=[0-9a-f]+$/);
      expect(m.header('cseq')).toBe('1 OPTIONS');
      expect(m.header('max-forwards')).toBe('70');
      expect(m.header('via')).toMatch(new RegExp(`^SIP/2\\.0/UDP 127\\.0\\.0\\.1:${port};branch=z9hG4bK[0-9a-f]+;rport$`));
      expect(m.header('contact')).toBe(`<sip:127.0.0.1:${port}>`);
      expect(m.header('accept')).toBe('application/sdp');
      expect(m.header('user-agent')).toBe('flashverify');
      // The trunk's extra headers go on its pings as on its INVITEs; credentials never unasked.
      expect(m.header('x-account')).toBe('acme');
      expect(m.header('authorization')).toBeUndefined();
      expect(m.header('proxy-authorization')).toBeUndefined();
    }
    expect(sipp.requests('INVITE')).toHaveLength(0);
    expect(await trunkUp(e, 'carrier')).toBe(1);
    expect(await pings(e, 'carrier', 'answered')).toBeGreaterThanOrEqual(options.length - 1);
    expect(await pings(e, 'carrier', 'timeout')).toBeUndefined();
    expect(await callsStarted(e, 'carrier')).toBeUndefined();
    // Each ping logged at debug with its trunk and Call-ID.
    const answered = e.logs.filter((l) => l.includes('"OPTIONS ping answered"'));
    expect(answered.length).toBeGreaterThanOrEqual(3);
    const first = JSON.parse(answered[0]!) as Record<string, unknown>;
    expect(first).toMatchObject({ level: 20, trunk: 'carrier', outcome: 'answered', status: 200 });
    expect(options.map((m) => m.header('call-id'))).toContain(first.call_id);
  });

  it.each([
    { scenario: 'uas-options', transport: 'tcp', status: 200 },
    { scenario: 'uas-options-405', transport: 'udp', status: 405 },
    { scenario: 'uas-options-405', transport: 'tcp', status: 405 },
  ] as const)('$scenario over $transport: $status is an answer, the trunk stays up', async ({ scenario, transport, status }) => {
    const sipp = await sippTrunk(scenario, undefined, transport);
    const e = await start({ trunks: [{ name: 'sbc', uri: sipp.uri, optionsPingMs: PING_MS }], trunkHealth: { failuresToMarkDown: 2 } });
    await waitFor(async () => ((await pings(e, 'sbc', 'answered')) ?? 0) >= 4, 5000);
    expect(sipp.sent().filter((m) => m.status === status).length).toBeGreaterThanOrEqual(4);
    expect(sipp.requests('OPTIONS')[0]!.startLine).toBe(`OPTIONS ${sipp.uri} SIP/2.0`);
    expect(await trunkUp(e, 'sbc')).toBe(1);
    expect(await pings(e, 'sbc', 'unreachable')).toBeUndefined();
    expect(await pings(e, 'sbc', 'timeout')).toBeUndefined();
  });

  it('nothing listening: marked down after failuresToMarkDown pings, no call placed; a trunk there again is back at the next ping', async () => {
    const port = await findFreePort();
    const e = await start({
      trunks: [{ name: 'primary', uri: `sip:127.0.0.1:${port}` }],
      // Back-off far longer than the test: only a ping can bring it back.
      trunkHealth: { optionsPingMs: PING_MS, failuresToMarkDown: 3, retryAfterMs: 60_000, maxRetryAfterMs: 60_000 },
    });
    // ICMP port unreachable for each ping: `unreachable` at once.
    await waitFor(async () => (await trunkUp(e, 'primary')) === 0, 5000, 20);
    expect(await pings(e, 'primary', 'unreachable')).toBe(3);
    expect(await pings(e, 'primary', 'answered')).toBeUndefined();
    expect(await callsStarted(e, 'primary')).toBeUndefined();
    const down = e.logs.find((l) => l.includes('trunk down; back once it answers an OPTIONS ping'));
    expect(JSON.parse(down!)).toMatchObject({ level: 40, trunk: 'primary', failures: 3, pinged: true });
    // Down, it is pinged on (one ping at a time, every interval).
    await waitFor(async () => ((await pings(e, 'primary', 'unreachable')) ?? 0) >= 5, 5000, 20);

    const sipp = await sippTrunk('uas-options', port);
    const back = Date.now();
    await waitFor(async () => (await trunkUp(e, 'primary')) === 1, 5000, 20);
    expect(Date.now() - back).toBeLessThan(5 * PING_MS);
    expect(sipp.requests('OPTIONS').length).toBeGreaterThanOrEqual(1);
    expect(sipp.requests('INVITE')).toHaveLength(0);
    expect(e.logs.some((l) => l.includes('trunk answers again; back in service') && l.includes('"trunk":"primary"'))).toBe(true);
    expect(await callsStarted(e, 'primary')).toBeUndefined();
  });

  it('a silent trunk (OPTIONS swallowed, no ICMP): each ping times out after the interval, before Timer F, and counts as failed', async () => {
    // A black hole on loopback: the port is bound (no ICMP unreachable), nothing is ever answered.
    const hole = createSocket('udp4');
    let received = 0;
    hole.on('message', () => void received++);
    await new Promise<void>((r) => hole.bind(0, '127.0.0.1', () => r()));
    try {
      const e = await start({
        timers: { t1Ms: 500, t2Ms: 4000, t4Ms: 5000 }, // Timer F 32 s: the ping's own timeout (the interval) comes first
        trunks: [{ name: 'silent', uri: `sip:127.0.0.1:${hole.address().port}`, optionsPingMs: PING_MS }],
        trunkHealth: { failuresToMarkDown: 2, retryAfterMs: 60_000 },
      });
      const t0 = Date.now();
      await waitFor(async () => (await trunkUp(e, 'silent')) === 0, 5000, 20);
      expect(Date.now() - t0).toBeLessThan(2000);
      expect(await pings(e, 'silent', 'timeout')).toBe(2);
      expect(received).toBeGreaterThanOrEqual(2);
      const failed = e.logs.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === 'OPTIONS ping failed');
      expect(failed).toMatchObject({ trunk: 'silent', outcome: 'timeout', phrase: `no final response within ${PING_MS} ms` });
      expect(failed!.call_id).toMatch(/^[0-9a-f]+$/);
    } finally {
      hole.close();
    }
  });

  it('0 turns pings off: off by default, and per trunk under a default that is on', async () => {
    const quietByDefault = await sippTrunk('uas-options');
    const offForThisTrunk = await sippTrunk('uas-options');
    const pinged = await sippTrunk('uas-options');
    // Default (sip.trunkHealth.optionsPingMs 0): nothing.
    const e1 = await start({ trunks: [{ name: 'quiet', uri: quietByDefault.uri }] });
    await new Promise((r) => setTimeout(r, 4 * PING_MS));
    expect(quietByDefault.requests()).toHaveLength(0);
    expect(await pings(e1, 'quiet', 'answered')).toBeUndefined();
    await e1.stop();
    engine = undefined;
    // On by default, off for one trunk (optionsPingMs: 0).
    const e2 = await start({
      trunks: [
        { name: 'off', uri: offForThisTrunk.uri, optionsPingMs: 0 },
        { name: 'on', uri: pinged.uri, priority: 1 },
      ],
      trunkHealth: { optionsPingMs: PING_MS },
    });
    await waitFor(async () => pinged.requests('OPTIONS').length >= 3, 5000);
    expect(offForThisTrunk.requests()).toHaveLength(0);
    expect(await pings(e2, 'off', 'answered')).toBeUndefined();
    expect(await pings(e2, 'on', 'answered')).toBeGreaterThanOrEqual(2);
  });

  it('shutdown stops the pings: none leaves once the worker stopped, and nothing keeps the stop waiting', async () => {
    const sipp = await sippTrunk('uas-options');
    const e = await start({ trunks: [{ name: 'carrier', uri: sipp.uri }], trunkHealth: { optionsPingMs: PING_MS } });
    await waitFor(async () => sipp.requests('OPTIONS').length >= 2, 5000);
    const t0 = Date.now();
    await e.stop();
    engine = undefined;
    expect(Date.now() - t0).toBeLessThan(3000);
    const seen = sipp.requests('OPTIONS').length;
    await new Promise((r) => setTimeout(r, 3 * PING_MS));
    expect(sipp.requests('OPTIONS').length).toBe(seen);
  });
});

describe('OPTIONS keep-alive pings through drachtio-server (sip.backend: drachtio)', { timeout: 30_000 }, () => {
  let fake: FakeDrachtioServer | undefined;
  afterEach(async () => {
    await engine?.stop();
    engine = undefined;
    await fake?.stop();
    fake = undefined;
  });

  it("pings drachtio-server answers itself (Timer F's 408) mark the trunk down, no call placed; an answered one brings it back", async () => {
    fake = await FakeDrachtioServer.start({ secret: 'cymru-test' });
    // Nothing answers at the trunk's address: drachtio-server's transaction layer gives up with its own 408.
    fake.answerOptions('192.0.2.10:5060', { local: 408, delayMs: 20 });
    const e = await start({
      backend: 'drachtio',
      drachtio: { host: '127.0.0.1', port: fake.port, secret: 'cymru-test', reconnectMinMs: 100, reconnectMaxMs: 400 },
      trunks: [{ name: 'carrier', uri: 'sip:192.0.2.10:5060', fromDomain: 'cli.example.net', optionsPingMs: PING_MS }],
      trunkHealth: { failuresToMarkDown: 2, retryAfterMs: 60_000, maxRetryAfterMs: 60_000 },
    });
    await waitFor(async () => (await trunkUp(e, 'carrier')) === 0, 5000, 20);
    expect(await pings(e, 'carrier', 'timeout')).toBe(2);
    expect(await callsStarted(e, 'carrier')).toBeUndefined();
    expect(fake.wire('INVITE')).toHaveLength(0);
    const options = fake.wire('OPTIONS');
    expect(options[0]!.uri).toBe('sip:192.0.2.10:5060');
    expect(options[0]!.sip.header('from')).toMatch(/^<sip:flashverify@cli\.example\.net>;tag=/);
    expect(fake.unexpectedFrames).toEqual([]);

    // The trunk answers again (with a 405: an answer all the same).
    fake.answerOptions('192.0.2.10:5060', { status: 405 });
    await waitFor(async () => (await trunkUp(e, 'carrier')) === 1, 5000, 20);
    expect(await pings(e, 'carrier', 'answered')).toBeGreaterThanOrEqual(1);
    expect(e.logs.some((l) => l.includes('trunk answers again; back in service'))).toBe(true);
    expect(await callsStarted(e, 'carrier')).toBeUndefined();
  });
});
