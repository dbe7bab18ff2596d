/**
 * A delivery receipt is never lost between being recorded and its event being
 * written (issue 4, audit item 1), and a parked receipt is never replaced by a
 * weaker one (item 7). The SMS worker (SmsProcessor) runs here against real
 * Redis and the test SMSC over loopback, beside an api-role engine that
 * creates the verifications; the events stream it writes to is made
 * unwritable for a while (a WRONGTYPE key), which is what a crash or a Redis
 * error between "record" and "publish" looks like from outside.
 */
import type { Job } from 'bullmq';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SmsProcessor } from '../../../src/engine/sms-processor.js';
import type { DeliveryJobData } from '../../../src/engine/queues.js';
import { EventPublisher } from '../../../src/events/event-publisher.js';
import { Metrics } from '../../../src/metrics/metrics.js';
import { SmppGateway } from '../../../src/sms/gateway.js';
import { Keys } from '../../../src/store/keys.js';
import { DEFAULT_SETTINGS } from '../../../smsc-test/protocol.js';
import { http, startTestEngine, testConfig, waitFor, type TestEngine } from '../../helpers/engine.js';
import { smscEntry, startSmsc, testLogger, type TestSmsc } from '../../helpers/smsc.js';

/** The prefix's keys, with the events stream under a key of this test's own (the api role never reads it). */
class KeysUnderTest extends Keys {
  override events(): string {
    return `${this.prefix}:events-under-test`;
  }
}

let smsc: TestSmsc;
let t: TestEngine | undefined;
let gateway: SmppGateway | undefined;

beforeAll(async () => {
  smsc = await startSmsc({ maxLifetimeMs: 110_000 });
});
afterAll(async () => {
  await smsc?.stop();
});
afterEach(async () => {
  await gateway?.stop();
  gateway = undefined;
  await t?.stop();
  t = undefined;
  await smsc.reset();
  await smsc.set({ ...DEFAULT_SETTINGS });
});

interface Rig {
  processor: SmsProcessor;
  keys: Keys;
  run(requestId: string): Promise<unknown>;
  events(requestId: string): Promise<Record<string, string>[]>;
  breakEvents(): Promise<void>;
  repairEvents(): Promise<void>;
  newVerification(phone: string): Promise<string>;
}

async function rig(): Promise<Rig> {
  const config = testConfig({
    api: { defaultRateLimitPerSecond: 1000 },
    sms: { enabled: true, smscs: [smscEntry(smsc)], unconfirmedDeadlineMs: 2_000 },
  } as Parameters<typeof testConfig>[0]);
  t = await startTestEngine(config, 'api');
  const engine = t;
  const keys = new KeysUnderTest(config.redis.prefix);
  gateway = SmppGateway.fromConfig(config.sms, testLogger);
  const processor = new SmsProcessor({
    redis: engine.redis,
    keys,
    sealer: engine.sealer,
    config,
    gateway,
    events: new EventPublisher(engine.redis, keys, 10_000),
    metrics: new Metrics({ defaultMetrics: false }),
    logger: testLogger,
    accountTemplate: async () => null,
  });
  gateway.onReceipt((r) => processor.handleReceipt(r));
  gateway.onLateResponse((request, outcome) => void processor.handleLateResponse(request, outcome));
  await gateway.start();
  await waitFor(async () => gateway!.status().every((s) => s.bindsUp > 0) || undefined, 5_000);
  const account = await engine.account({ balance: 1 });
  return {
    processor,
    keys,
    // What BullMQ does with a job (its re-run after a crash is the same call again); no token: no delays here.
    run: (requestId) => processor.process({ data: { request_id: requestId } } as Job<DeliveryJobData>, undefined),
    events: async (requestId) =>
      (await engine.redis.xrange(keys.events(), '-', '+'))
        .map(([, fields]) => Object.fromEntries(fields.map((v, i, a) => (i % 2 === 0 ? [v, a[i + 1]] : [])).filter((p) => p.length)) as Record<string, string>)
        .filter((e) => e.request_id === requestId),
    breakEvents: async () => {
      await engine.redis.set(keys.events(), 'not a stream');
    },
    repairEvents: async () => {
      await engine.redis.del(keys.events());
    },
    newVerification: async (phone) => {
      const res = await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { phone_number: phone, method: 'sms', code_length: 6 } });
      expect(res.status, JSON.stringify(res.body)).toBe(201);
      return (res.body as { request_id: string }).request_id;
    },
  };
}

describe('receipt settlement', () => {
  it('a final receipt whose event could not be written is answered ESME_RX_T_APPN, and its resend is applied (not taken as a duplicate)', async () => {
    const r = await rig();
    await smsc.set({ receiptDelayMs: 50, receiptRetries: 5, receiptRetryMs: 200 });
    const id = await r.newVerification('+447700900811');
    await r.breakEvents();
    expect(await r.run(id)).toMatchObject({ kind: 'accepted' });
    // The first deliver_sm could not be settled: the SMSC got a temporary error and will send it again.
    await smsc.waitFor((s) => s.receipts[0]?.statuses.some((st) => st !== null && st !== 0) || undefined, 5_000, 'a refused receipt');
    await r.repairEvents();
    const events = await waitFor(async () => ((await r.events(id)).length > 0 ? r.events(id) : undefined), 5_000);
    expect(events.map((e) => e.status)).toEqual(['delivered']);
    expect(JSON.parse(events[0]!.detail!)).toMatchObject({ stat: 'DELIVRD' });
    const receipt = (await smsc.state()).receipts[0]!;
    expect(receipt.statuses.at(-1)).toBe(0);
    expect(await t!.redis.hget(t!.keys.verification(id), 'sms_receipt')).toBe('DELIVRD');
  });

  it('a receipt parked before its submit_sm_resp survives a crash before it is settled: the job re-run settles it', async () => {
    const r = await rig();
    await smsc.set({ receiptBeforeResp: true });
    const id = await r.newVerification('+447700900812');
    await r.breakEvents();
    // The receipt is parked, the acceptance recorded, then settling it fails: the job dies here, as in a crash.
    await expect(r.run(id)).rejects.toThrow(/WRONGTYPE/);
    expect(await t!.redis.hget(t!.keys.verification(id), 'sms_state')).toBe('accepted');
    await r.repairEvents();
    // BullMQ runs the stalled job again: nothing is sent twice, the parked receipt is settled.
    await r.run(id);
    expect((await r.events(id)).map((e) => e.status)).toEqual(['delivered']);
    expect((await smsc.state()).submits.filter((s) => s.destination === '447700900812')).toHaveLength(1);
  });

  it('the message id is mapped with its request and account, never the number; a map written by an older version (request id alone) still settles', async () => {
    const r = await rig();
    const account = (await t!.redis.hget(t!.keys.verification(await r.newVerification('+447700900814')), 'account_id'))!;
    for (const [phone, messageId, oldFormat] of [
      ['+447700900815', '777000222', false],
      ['+447700900816', '777000333', true],
    ] as const) {
      const id = await r.newVerification(phone);
      const receipt = { smsc: 'default', messageId };
      await r.processor.handleLateAccept({ requestId: id, to: phone }, { kind: 'accepted', rawMessageId: messageId, ...receipt, bind: 'default#0' });
      const mapKey = r.keys.smsMessage('default', messageId);
      const mapped = (await t!.redis.get(mapKey))!;
      expect(mapped.split(' ').slice(0, 2)).toEqual([id, account]);
      expect(mapped).not.toContain(phone.slice(1));
      if (oldFormat) await t!.redis.set(mapKey, id, 'KEEPTTL');
      await r.processor.handleReceipt({ ...receipt, state: 'DELIVRD' });
      const events = await r.events(id);
      expect(events.map((e) => [e.status, e.account_id, JSON.parse(e.detail!).stat])).toEqual([['delivered', account, 'DELIVRD']]);
      expect(await t!.redis.hget(t!.keys.verification(id), 'sms_receipt')).toBe('DELIVRD');
    }
  });

  it('an SMSC that gives an id again (restarted, its counter from the start): the new message\'s receipt, come before its submit_sm_resp is mapped, goes to the new verification, not the settled one', async () => {
    const r = await rig();
    const receipt = { smsc: 'default', messageId: '100000031' };
    const old = await r.newVerification('+447700900817');
    await r.processor.handleLateAccept({ requestId: old, to: '+447700900817' }, { kind: 'accepted', rawMessageId: receipt.messageId, ...receipt, bind: 'default#0' });
    await r.processor.handleReceipt({ ...receipt, state: 'DELIVRD' });
    expect((await r.events(old)).map((e) => e.status)).toEqual(['delivered']);
    // The restarted SMSC takes a new message under the same id and sends its receipt before this worker maps the id.
    const fresh = await r.newVerification('+447700900818');
    await r.processor.handleReceipt({ ...receipt, state: 'DELIVRD' });
    expect((await r.events(old)).map((e) => e.status)).toEqual(['delivered']);
    expect(await t!.redis.ttl(r.keys.smsEarlyReceipt('default', receipt.messageId))).toBeGreaterThan(0);
    await r.processor.handleLateAccept({ requestId: fresh, to: '+447700900818' }, { kind: 'accepted', rawMessageId: receipt.messageId, ...receipt, bind: 'default#0' });
    expect((await r.events(fresh)).map((e) => [e.status, JSON.parse(e.detail!).stat])).toEqual([['delivered', 'DELIVRD']]);
    expect(await t!.redis.hget(t!.keys.verification(fresh), 'sms_receipt')).toBe('DELIVRD');
    // Taken: not parked any more.
    expect(await t!.redis.exists(r.keys.smsEarlyReceipt('default', receipt.messageId))).toBe(0);
  });

  it('a parked ENROUTE does not replace a parked DELIVRD: the acceptance then settles delivered', async () => {
    const r = await rig();
    const id = await r.newVerification('+447700900813');
    const receipt = { smsc: 'default', messageId: '777000111' };
    await r.processor.handleReceipt({ ...receipt, state: 'DELIVRD' });
    await r.processor.handleReceipt({ ...receipt, state: 'ENROUTE' });
    await r.processor.handleLateAccept({ requestId: id, to: '+447700900813' }, { kind: 'accepted', rawMessageId: '777000111', ...receipt, bind: 'default#0' });
    expect((await r.events(id)).map((e) => [e.status, JSON.parse(e.detail!).stat])).toEqual([['delivered', 'DELIVRD']]);
  });
});
