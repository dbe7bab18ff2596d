import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { findFreePort, sipUriUser, startSippUas, type SippUas } from '../helpers/sipp.js';
import { http, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';

/**
 * What an operator scrapes: GET /metrics on the API listener after real calls
 * against a SIPp far end, and the worker role's own operator listener.
 */
const SIP_TIMERS = { t1Ms: 50, t2Ms: 400, t4Ms: 500 };

let engine: TestEngine | undefined;
let uas: SippUas | undefined;
afterEach(async () => {
  await uas?.stop();
  await engine?.stop();
  uas = undefined;
  engine = undefined;
});

/** The value of one sample line, e.g. sample(text, 'flashverify_calls_total', {outcome: 'busy'}). */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return undefined;
}

async function flashCallAgainst(scenario: string, phone: string): Promise<{ requestId: string; auth: string }> {
  uas = await startSippUas({ scenario, maxLifetimeMs: 30_000 });
  engine = await startTestEngine(
    testConfig({
      flash: { ringMs: 300, ringingTimeoutMs: 1500 },
      sip: { timers: SIP_TIMERS, trunks: [{ name: 'sipp', uri: uas.uri }] },
    }),
  );
  const account = await engine.account({ balance: 1 });
  const created = await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { phone_number: phone, method: 'flash_call' } });
  expect(created.status).toBe(201);
  const key = engine.keys.verification(String(created.body.request_id));
  await waitFor(async () => (await engine!.redis.hget(key, 'outcome')) ?? undefined, 15_000);
  return { requestId: String(created.body.request_id), auth: account.auth };
}

async function scrape(url: string): Promise<string> {
  const res = await fetch(`${url}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
  return res.text();
}

describe('GET /metrics on the API listener', () => {
  it('counts a rung-then-cancelled flash call by trunk, with its post-dial delay and range', async () => {
    const { requestId, auth } = await flashCallAgainst('uas-ring-cancel', '+447700900131');
    const text = await scrape(engine!.url);
    expect(sample(text, 'flashverify_calls_started_total', { method: 'flash_call', trunk: 'sipp' })).toBe(1);
    expect(sample(text, 'flashverify_calls_total', { method: 'flash_call', trunk: 'sipp', outcome: 'cancelled' })).toBe(1);
    expect(sample(text, 'flashverify_post_dial_delay_seconds_count', { trunk: 'sipp' })).toBe(1);
    // A GB number: the CLI came from the GB range of config/default.yaml.
    expect(sample(text, 'flashverify_range_sent_total', { range: '+44190873' })).toBe(1);
    // Default process metrics ride along on the same registry.
    expect(sample(text, 'process_cpu_user_seconds_total')).toBeGreaterThanOrEqual(0);
    // The call is over: not counted, although the stack keeps it 64*T1 for a late 2xx (the call's `outcome` is
    // written after the SIP call ended).
    expect(sample(text, 'flashverify_active_calls')).toBe(0);
    expect(sample(text, 'flashverify_queue_jobs', { queue: 'flash', state: 'waiting' })).toBe(0);
    expect(sample(text, 'flashverify_job_latency_seconds_count', { queue: 'flash' })).toBe(1);

    // The user types the last digits of the caller ID: the range's verified counter follows.
    const cli = sipUriUser(uas!.requests('INVITE')[0]!.header('from')) ?? '';
    expect(cli).toMatch(/^\+44190873\d{4}$/);
    const checked = await http(`${engine!.url}/v1/verify/check`, { auth, body: { request_id: requestId, code: cli.slice(-4) } });
    expect(checked.body.status).toBe('verified');
    await waitFor(async () => sample(await scrape(engine!.url), 'flashverify_range_verified_total', { range: '+44190873' }) === 1);
  });

  it('after a resend from another range, the verification counts for the range whose caller ID verified, and the record names the resend\'s call', async () => {
    uas = await startSippUas({ scenario: 'uas-ring-cancel', calls: 2, maxLifetimeMs: 30_000 });
    engine = await startTestEngine(
      testConfig({
        flash: { ringMs: 300, ringingTimeoutMs: 1500 },
        numbers: { ranges: [{ prefix: '+44190873', country: 'GB' }, { prefix: '+44190874', country: 'GB' }] },
        sip: { timers: SIP_TIMERS, trunks: [{ name: 'sipp', uri: uas.uri }] },
      }),
    );
    const account = await engine.account({ balance: 1 });
    const body = { phone_number: '+447700900133', method: 'flash_call' };
    const created = await http(`${engine.url}/v1/verify`, { auth: account.auth, body });
    const id = String(created.body.request_id);
    const key = engine.keys.verification(id);
    await waitFor(async () => (await engine!.redis.hget(key, 'outcome')) ?? undefined, 15_000);
    expect((await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { ...body, resend: true } })).status).toBe(200);
    await waitFor(async () => uas!.requests('INVITE').length === 2 && ((await engine!.redis.hget(key, 'outcome')) ?? undefined), 15_000);
    const [first, second] = uas.requests('INVITE').map((r) => ({ cli: sipUriUser(r.header('from')) ?? '', callId: r.header('call-id') }));
    // The two sends took turns between the ranges.
    expect(new Set([first!.cli.slice(0, 9), second!.cli.slice(0, 9)])).toEqual(new Set(['+44190873', '+44190874']));
    await waitFor(async () => ((await engine!.redis.hget(key, 'call_id')) === second!.callId ? true : undefined), 5000);
    const checked = await http(`${engine.url}/v1/verify/check`, { auth: account.auth, body: { request_id: id, code: second!.cli.slice(-4) } });
    expect(checked.body.status).toBe('verified');
    await waitFor(async () => sample(await scrape(engine!.url), 'flashverify_range_verified_total', { range: second!.cli.slice(0, 9) }) === 1);
    expect(sample(await scrape(engine.url), 'flashverify_range_verified_total', { range: first!.cli.slice(0, 9) })).toBeUndefined();
    expect(await engine.redis.hget(key, 'range')).toBe(second!.cli.slice(0, 9));
  });

  it('counts a call the far end refused with 486 as outcome busy, without a post-dial delay', async () => {
    await flashCallAgainst('uas-busy-486', '+447700900132');
    const text = await scrape(engine!.url);
    expect(sample(text, 'flashverify_calls_total', { method: 'flash_call', trunk: 'sipp', outcome: 'busy' })).toBe(1);
    expect(sample(text, 'flashverify_calls_total', { outcome: 'cancelled' })).toBeUndefined();
    expect(sample(text, 'flashverify_post_dial_delay_seconds_count', { trunk: 'sipp' })).toBeUndefined();
    expect(sample(text, 'flashverify_range_sent_total')).toBeUndefined();
  });

  it('shows how far behind the events stream each consumer group is (no consumer runs in an api-only process)', async () => {
    engine = await startTestEngine(testConfig({ sip: { trunks: [{ name: 'none', uri: 'sip:127.0.0.1:9' }] } }), 'api');
    const account = await engine.account({ balance: 1 });
    for (const phone of ['+447700900131', '+447700900132']) {
      expect((await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { phone_number: phone, method: 'sms' } })).status).toBe(201);
    }
    const written = await engine.redis.xlen(engine.keys.events());
    expect(written).toBeGreaterThanOrEqual(2);
    const text = await scrape(engine.url);
    for (const group of [engine.config.events.consumerGroup, engine.config.events.webhookGroup]) {
      expect([group, sample(text, 'flashverify_events_group_lag', { group })]).toEqual([group, written]);
      expect([group, sample(text, 'flashverify_events_group_pending', { group })]).toEqual([group, 0]);
    }
    // A group at the stream's last entry whose count of entries read Redis has lost (as after a restart): Redis
    // estimates a lag, the group is caught up.
    const status = engine.config.events.consumerGroup;
    await engine.redis.call('XGROUP', 'SETID', engine.keys.events(), status, '$', 'ENTRIESREAD', '0');
    const estimate = ((await engine.redis.call('XINFO', 'GROUPS', engine.keys.events())) as unknown[][]).find((g) => g[1] === status)!;
    expect(estimate[estimate.indexOf('lag') + 1]).toBe(written);
    expect(sample(await scrape(engine.url), 'flashverify_events_group_lag', { group: status })).toBe(0);
  });

  it('is absent with metrics.enabled false', async () => {
    engine = await startTestEngine(testConfig({ metrics: { enabled: false }, sip: { trunks: [{ name: 'none', uri: 'sip:127.0.0.1:9' }] } }), 'api');
    expect((await fetch(`${engine.url}/metrics`)).status).toBe(404);
  });
});

describe('the worker role operator listener', () => {
  it('serves /metrics, /healthz and /readyz with Redis and the SIP transport', async () => {
    const port = await findFreePort();
    engine = await startTestEngine(
      testConfig({ metrics: { host: '127.0.0.1', port }, sip: { trunks: [{ name: 'none', uri: 'sip:127.0.0.1:9' }] } }),
      'worker',
    );
    const url = engine.engine.metricsUrl;
    expect(url).toBe(`http://127.0.0.1:${port}`);
    expect(engine.engine.httpUrl).toBeUndefined();
    const text = await scrape(url!);
    expect(sample(text, 'flashverify_active_calls')).toBe(0);
    expect(sample(text, 'flashverify_queue_jobs', { queue: 'webhook', state: 'waiting' })).toBe(0);
    // Which version runs where: package.json's, and this Node.js.
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    expect(sample(text, 'flashverify_build_info', { version: pkg.version, node: process.version })).toBe(1);
    expect((await http(`${url}/healthz`)).body).toEqual({ status: 'ok' });
    const ready = await http(`${url}/readyz`);
    expect(ready.status).toBe(200);
    expect(ready.body).toEqual({ status: 'ready', checks: { redis: true, sip: true } });
  });

  it('has no listener with metrics.port 0', async () => {
    engine = await startTestEngine(testConfig({ sip: { trunks: [{ name: 'none', uri: 'sip:127.0.0.1:9' }] } }), 'worker');
    expect(engine.engine.metricsUrl).toBeUndefined();
  });
});
