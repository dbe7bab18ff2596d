import { afterAll, describe, expect, it } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import type { Config } from '../../src/config/schema.js';
import { deletePrefix, http, readEvents, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { smscEntry, startSmsc, type TestSmsc } from '../helpers/smsc.js';
import { startRtpReceiver, type RtpReceiver } from '../helpers/rtp-receiver.js';
import { sipUriUser, startSippUas, type SippUas } from '../helpers/sipp.js';
import { Receiver } from '../helpers/webhook-receiver.js';

/**
 * Secrecy end to end: one full run of the engine (role 'all', LOG_LEVEL debug)
 * — a flash call that rings (wrong check, then right check), a voice OTP that
 * is answered and played, a flash call that fails busy, signed webhooks to a
 * local receiver — then everything the engine left behind (every log line,
 * every Redis key and value under the test prefix, every event of the stream,
 * every webhook request, every API response) is searched for what must never
 * be there: a code in clear, a flash CLI (it contains the code), the API
 * secret, the master key, and (in Redis, events and info+ logs) a destination number.
 *
 * The trunk is always trunks[0], so each call runs on its own engine process
 * pointed at its own SIPp; the engines share one Redis prefix and master key.
 */
const T1 = 50;
const PHONES = { flash: '+447700900201', voice: '+447700900202', busy: '+447700900203', sms: '+447700900204' } as const;

/** One searchable item: where it came from and its text. */
interface Item {
  where: string;
  text: string;
  /** Exact values (Redis string values, hash fields and values, members ...), for exact-match checks. */
  values: string[];
}

/** Every key under the prefix, with its full value by type. */
async function dumpRedis(t: TestEngine): Promise<Item[]> {
  const { redis } = t;
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, found] = await redis.scan(cursor, 'MATCH', `${t.config.redis.prefix}:*`, 'COUNT', 1000);
    cursor = next;
    keys.push(...found);
  } while (cursor !== '0');
  const items: Item[] = [];
  for (const key of keys.sort()) {
    const type = await redis.type(key);
    let values: string[] = [];
    switch (type) {
      case 'string':
        values = [(await redis.get(key)) ?? ''];
        break;
      case 'hash':
        values = Object.entries(await redis.hgetall(key)).flat();
        break;
      case 'list':
        values = await redis.lrange(key, 0, -1);
        break;
      case 'set':
        values = await redis.smembers(key);
        break;
      case 'zset':
        values = await redis.zrange(key, '0', '-1', 'WITHSCORES');
        break;
      case 'stream':
        values = (await redis.xrange(key, '-', '+')).flatMap(([id, flat]) => [id, ...flat]);
        break;
      default:
        values = [];
    }
    // The key name itself is searched too (its ':'-separated segments count as exact values).
    items.push({ where: `redis ${type} ${key}`, text: [key, ...values].join('\n'), values: [...key.split(':'), ...values] });
  }
  return items;
}

/** True when `code` appears as a value in `item`: an exact value, a JSON string token, `code":<code>`, `code=<code>`. */
function codeLeak(item: Item, code: string): string | undefined {
  if (item.values.includes(code)) return 'exact value';
  if (item.text.includes(`"${code}"`)) return 'JSON string token';
  const esc = code.replace(/\D/g, '');
  if (new RegExp(`code\\\\?"\\s*:\\s*\\\\?"?${esc}(?!\\d)`).test(item.text)) return 'code": field';
  if (new RegExp(`code=${esc}(?!\\d)`).test(item.text)) return 'code= field';
  return undefined;
}

describe('secrecy: nothing secret in logs, Redis, events or webhooks', () => {
  const engines: TestEngine[] = [];
  const sipps: SippUas[] = [];
  let rtp: RtpReceiver | undefined;
  let smsc: TestSmsc | undefined;
  const receiver = new Receiver();
  afterAll(async () => {
    for (const s of sipps) await s.stop();
    for (const e of engines) await e.engine.stop().catch(() => undefined);
    const last = engines.at(-1);
    if (last) await deletePrefix(last.redis, last.config.redis.prefix);
    for (const e of engines) await e.redis.quit().catch(() => undefined);
    await rtp?.close();
    await smsc?.stop();
    await receiver.stop();
  });

  it('a full run leaks no code, CLI, API secret, master key or (outside the API and webhooks) phone number', async () => {
    const base = testConfig();
    const configFor = (uri: string): Readonly<Config> =>
      testConfig({
        redis: { prefix: base.redis.prefix },
        security: { masterKey: base.security.masterKey },
        api: { defaultRateLimitPerSecond: 1000 },
        flash: { ringMs: 300, ringingTimeoutMs: 1500 },
        voice: { answerTimeoutMs: 1500 },
        sip: { timers: { t1Ms: T1, t2Ms: 400, t4Ms: 500 }, trunks: [{ name: 'sipp', uri }] },
        webhooks: { allowPrivate: true, attempts: 4, backoffMs: 100, orderPollMs: 50 },
      });
    /** Runs one call's engine against a fresh SIPp; the previous engine is stopped (its Redis data stays). */
    const engineFor = async (scenario: string, vars?: Record<string, string | number>): Promise<{ t: TestEngine; uas: SippUas }> => {
      const prev = engines.at(-1);
      if (prev) await prev.engine.stop();
      const uas = await startSippUas({ scenario, vars, maxLifetimeMs: 60_000 });
      sipps.push(uas);
      const t = await startTestEngine(configFor(uas.uri), 'all');
      engines.push(t);
      return { t, uas };
    };
    const apiResponses: string[] = [];
    const api = async (t: TestEngine, path: string, auth: string, body?: unknown, headers?: Record<string, string>) => {
      const r = await http(`${t.url}${path}`, { auth, body, headers });
      apiResponses.push(JSON.stringify(r.body));
      return r;
    };
    const waitStatus = async (t: TestEngine, id: string, statuses: string[], ms: number) =>
      waitFor(async () => {
        const h = await t.redis.hgetall(t.keys.verification(id));
        return h.outcome && statuses.includes(h.status ?? '') ? h : undefined;
      }, ms);

    // ---------------------------------------------------------------- flash call: rings, wrong check, right check
    const hookUrl = await receiver.start();
    const f = await engineFor('uas-ring-cancel');
    const account = await f.t.account({ balance: 10 });
    await new AccountStore(f.t.redis, f.t.keys, f.t.sealer, { allowPrivateWebhooks: true }).setWebhook(account.account_id, hookUrl);
    const flashCreated = await api(f.t, '/v1/verify', account.auth, { phone_number: PHONES.flash, method: 'flash_call' });
    expect(flashCreated.status).toBe(201);
    const flashId = String(flashCreated.body.request_id);
    const flashInvite = await f.uas.waitForMessage((m) => m.method === 'INVITE', 10_000);
    // As a handset would: the code is the last 4 digits of the caller ID.
    const flashCli = sipUriUser(flashInvite.header('from'))!;
    expect(flashCli).toMatch(/^\+44190873\d{4}$/);
    const flashCode = flashCli.slice(-4);
    await waitStatus(f.t, flashId, ['delivered'], 15_000);
    const wrongCode = String((Number(flashCode) + 1) % 10_000).padStart(4, '0');
    const wrong = await api(f.t, '/v1/verify/check', account.auth, { request_id: flashId, code: wrongCode });
    expect(wrong.status).toBe(400);
    expect(wrong.body.error).toBe('invalid_code');
    const right = await api(f.t, '/v1/verify/check', account.auth, { request_id: flashId, code: flashCode });
    expect(right.status).toBe(200);
    expect(right.body.status).toBe('verified');
    expect((await f.uas.waitForExit(10_000)).code).toBe(0);

    // ---------------------------------------------------------------- voice OTP: answered, played
    rtp = await startRtpReceiver();
    const v = await engineFor('uas-voice-answer', { rtp_ip: '127.0.0.1', rtp_port: rtp.port, rtp_pt: 0, rtp_codec: 'PCMU' });
    const voiceCreated = await api(v.t, '/v1/verify', account.auth, { phone_number: PHONES.voice, method: 'voice', code_length: 6 });
    expect(voiceCreated.status).toBe(201);
    const voiceId = String(voiceCreated.body.request_id);
    const voiceCode = v.t.sealer.open((await v.t.redis.hget(v.t.keys.verification(voiceId), 'code_enc'))!, `code:${voiceId}`);
    expect(voiceCode).toMatch(/^\d{6}$/);
    const voiceRecord = await waitStatus(v.t, voiceId, ['delivered', 'failed'], 40_000);
    expect(voiceRecord.outcome).toBe('played');
    expect((await v.uas.waitForExit(10_000)).code).toBe(0);
    expect(rtp.packets.length).toBeGreaterThan(50);

    // ---------------------------------------------------------------- flash call: busy
    const b = await engineFor('uas-busy-486');
    const busyCreated = await api(b.t, '/v1/verify', account.auth, { phone_number: PHONES.busy, method: 'flash_call' });
    expect(busyCreated.status).toBe(201);
    const busyId = String(busyCreated.body.request_id);
    const busyInvite = await b.uas.waitForMessage((m) => m.method === 'INVITE', 10_000);
    const busyCli = sipUriUser(busyInvite.header('from'))!;
    expect(busyCli).toMatch(/^\+44190873\d{4}$/);
    const busyCode = busyCli.slice(-4);
    await waitStatus(b.t, busyId, ['failed'], 15_000);
    expect((await b.uas.waitForExit(10_000)).code).toBe(0);
    const busyStatus = await api(b.t, `/v1/verify/${busyId}`, account.auth);
    expect(busyStatus.body.failure_reason).toBe('busy');

    // ---------------------------------------------------------------- SMS OTP: submitted, receipt, delivered
    await b.t.engine.stop();
    smsc = await startSmsc({ maxLifetimeMs: 60_000 });
    const st = await startTestEngine(
      testConfig({
        redis: { prefix: base.redis.prefix },
        security: { masterKey: base.security.masterKey },
        api: { defaultRateLimitPerSecond: 1000 },
        webhooks: { allowPrivate: true, attempts: 4, backoffMs: 100, orderPollMs: 50 },
        sms: { enabled: true, smscs: [smscEntry(smsc)] },
      } as Parameters<typeof testConfig>[0]),
      'all',
    );
    engines.push(st);
    // With an Idempotency-Key (the first response is kept for replays: it holds the number), itself holding the number.
    const smsCreated = await api(st, '/v1/verify', account.auth, { phone_number: PHONES.sms, method: 'sms', code_length: 6 }, { 'idempotency-key': `sms-to-${PHONES.sms}` });
    expect(smsCreated.status).toBe(201);
    const smsId = String(smsCreated.body.request_id);
    await waitFor(async () => ((await st.redis.hget(st.keys.verification(smsId), 'status')) === 'delivered' ? true : undefined), 15_000);
    // As a handset would: the code is in the text the SMSC received.
    const smsText = (await smsc.state()).submits.find((x) => x.destination === PHONES.sms.slice(1))!.text;
    const smsCode = /(\d{6})$/.exec(smsText)![1]!;

    // ---------------------------------------------------------------- webhooks delivered
    await waitFor(
      async () =>
        receiver.events(flashId).includes('verification.verified') &&
        receiver.events(voiceId).includes('verification.delivered') &&
        receiver.events(busyId).includes('verification.failed') &&
        receiver.events(smsId).includes('verification.delivered'),
      20_000,
    );
    expect(receiver.events(flashId)).toEqual(['verification.sent', 'verification.delivered', 'verification.verified']);
    expect(receiver.events(voiceId)).toEqual(['verification.sent', 'verification.delivered']);
    expect(receiver.events(busyId)).toEqual(['verification.sent', 'verification.failed']);
    expect(receiver.events(smsId)).toEqual(['verification.sent', 'verification.delivered']);
    // Let BullMQ record the completions (returnvalue) and the webhook order queues drain: nothing pending (score 0)
    // in any of them (a delivered event stays, marked done, for a while).
    await waitFor(async () => {
      for (const order of await st.redis.keys(`${base.redis.prefix}:whq:*`)) if ((await st.redis.zcount(order, 0, 0)) > 0) return false;
      return true;
    }, 5000);
    await new Promise((r) => setTimeout(r, 300));

    // ---------------------------------------------------------------- collect
    const t = st;
    const redisItems = await dumpRedis(t);
    const events = await readEvents(t.redis, t.keys);
    const eventItems: Item[] = events.map((e, i) => ({ where: `event #${i}`, text: JSON.stringify(e), values: Object.values(e) }));
    const logItems: Item[] = engines.flatMap((e, n) =>
      e.logs.map((line, i) => ({ where: `log engine${n} #${i}: ${line.slice(0, 300)}`, text: line, values: [] })),
    );
    const hookItems: Item[] = receiver.received.map((h, i) => ({ where: `webhook #${i}`, text: `${JSON.stringify(h.headers)}\n${h.body.toString('utf8')}`, values: [] }));
    const apiItems: Item[] = apiResponses.map((r, i) => ({ where: `api response #${i}`, text: r, values: [] }));

    // The collection is not empty: the run really left all of this behind.
    expect(logItems.length).toBeGreaterThan(20);
    expect(logItems.some((l) => l.text.includes('"level":20'))).toBe(true); // debug lines were captured
    expect(redisItems.some((i) => i.where.startsWith('redis hash') && i.where.includes(':bull:'))).toBe(true);
    expect(redisItems.some((i) => i.where.includes(`:vr:${flashId}`))).toBe(true);
    expect(events.filter((e) => [flashId, voiceId, busyId, smsId].includes(e.request_id ?? '')).length).toBeGreaterThanOrEqual(9);
    expect(receiver.received.length).toBe(9);
    expect(redisItems.some((i) => i.where.includes(':smsid:'))).toBe(true);
    expect(redisItems.some((i) => i.where.includes(':idem:'))).toBe(true);

    const leaks: string[] = [];
    const everything = [...logItems, ...redisItems, ...eventItems, ...hookItems, ...apiItems];
    const secret = account.api_secret;
    expect(secret).toMatch(/^[0-9a-f]{64}$/);
    const masterKey = base.security.masterKey;
    const codes = { flash: flashCode, 'wrong check': wrongCode, voice: voiceCode, busy: busyCode, sms: smsCode };
    const clis = { flash: flashCli, busy: busyCli };
    for (const item of everything) {
      const lower = item.text.toLowerCase();
      if (lower.includes(secret.toLowerCase())) leaks.push(`API secret in ${item.where}`);
      if (lower.includes(masterKey.toLowerCase())) leaks.push(`master key in ${item.where}`);
      if (item.text.includes(Buffer.from(masterKey, 'hex').toString('base64'))) leaks.push(`master key (base64) in ${item.where}`);
      for (const [name, cli] of Object.entries(clis)) {
        if (item.text.includes(cli) || item.text.includes(cli.slice(1))) leaks.push(`${name} CLI ${cli} in ${item.where}`);
      }
      for (const [name, code] of Object.entries(codes)) {
        const how = codeLeak(item, code);
        if (how) leaks.push(`${name} code ${code} (${how}) in ${item.where}`);
      }
    }
    // Destination numbers: sealed at rest, kept out of events and of every log line, debug included
    // (the SIP stack masks the user part of Request-URIs); webhooks and API responses carry them by design.
    for (const item of [...redisItems, ...eventItems, ...logItems]) {
      for (const phone of Object.values(PHONES)) {
        if (item.text.includes(phone) || item.text.includes(phone.slice(1))) leaks.push(`phone ${phone} in ${item.where}`);
      }
    }
    expect(leaks).toEqual([]);
  }, 120_000);
});
