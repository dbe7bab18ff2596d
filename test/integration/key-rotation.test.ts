import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import { Sealer } from '../../src/crypto/sealer.js';
import { RangeSelector } from '../../src/numbers/range-selector.js';
import { Keys } from '../../src/store/keys.js';
import { VerificationService } from '../../src/verification/verification-service.js';
import { deletePrefix, http, REDIS_URL, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';

/**
 * Master key rotation (README "Rotating the master key"): the new key becomes
 * `security.masterKey`, the old one moves to `security.previousMasterKeys`.
 * Everything sealed or MACed with the old key keeps working: phone numbers
 * and codes open, API secrets authenticate (and are re-sealed under the new
 * key at first use), codes sent before the rotation verify; what is written
 * afterwards uses the new key only.
 */
let engine: TestEngine | undefined;
afterEach(async () => {
  await engine?.stop();
  engine = undefined;
});

describe('master key rotation', () => {
  it('records of the old key still open, old secrets and codes still work, new records use the new key', async () => {
    const oldKey = randomBytes(32);
    const newKey = randomBytes(32);
    const config = testConfig({ security: { masterKey: newKey.toString('hex'), previousMasterKeys: [oldKey.toString('hex')] } });
    // Before the rotation: an account and a verification written by an engine on the old key.
    const redis = new Redis(REDIS_URL);
    const keys = new Keys(config.redis.prefix);
    const oldSealer = new Sealer(oldKey);
    const account = await new AccountStore(redis, keys, oldSealer).create({ name: 'before', balance: 5, currency: 'GBP', active: true });
    const oldService = new VerificationService(redis, keys, oldSealer, config, { enqueue: async () => undefined }, pino({ level: 'silent' }), new Set(['flash_call'] as const));
    const before = await oldService.create(await new AccountStore(redis, keys, oldSealer).get(account.account_id), { phone_number: '+447700900321' });
    const oldRecord = await redis.hgetall(keys.verification(before.request_id));
    const code = oldSealer.open(oldRecord.code_enc!, `code:${before.request_id}`);
    await redis.quit();

    // After: the engine runs on the new key with the old one listed as previous.
    engine = await startTestEngine(config, 'api');
    const newSealer = new Sealer(newKey);
    const auth = 'Basic ' + Buffer.from(`${account.api_key}:${account.api_secret}`).toString('base64');
    expect(newSealer.isCurrent(oldRecord.phone_enc!)).toBe(false);

    // The old API secret authenticates; the account is re-sealed under the new key at that first use.
    const status = await http(`${engine.url}/v1/verify/${before.request_id}`, { auth });
    expect(status.status).toBe(200);
    expect(status.body.phone_number).toBe('+447700900321'); // phone sealed with the old key opens
    const acct = await engine.redis.hgetall(engine.keys.account(account.account_id));
    expect(newSealer.isCurrent(acct.secret_enc!)).toBe(true);
    expect(newSealer.open(acct.secret_enc!, `secret:${account.account_id}`)).toBe(account.api_secret);
    expect(newSealer.matches('api-secret', `${account.api_key}:${account.api_secret}`, acct.secret_mac!)).toBe('current');

    // The code sent before the rotation (MACed with the old key) verifies.
    const checked = await http(`${engine.url}/v1/verify/check`, { auth, body: { request_id: before.request_id, code } });
    expect([checked.status, checked.body.status]).toEqual([200, 'verified']);

    // New records use the new key only: they open without the old one.
    const after = await http(`${engine.url}/v1/verify`, { auth, body: { phone_number: '+447700900322' } });
    expect(after.status).toBe(201);
    const fresh = await engine.redis.hgetall(engine.keys.verification(String(after.body.request_id)));
    expect(newSealer.isCurrent(fresh.phone_enc!)).toBe(true);
    expect(newSealer.open(fresh.phone_enc!, `phone:${String(after.body.request_id)}`)).toBe('+447700900322');
    // And the old key alone cannot open them.
    expect(() => oldSealer.open(fresh.phone_enc!, `phone:${String(after.body.request_id)}`)).toThrow(/unknown key/);
  });

  it('velocity windows and live-verification pointers set before a rotation still apply after it', async () => {
    const oldKey = randomBytes(32);
    const newKey = randomBytes(32);
    const config = testConfig({
      api: { defaultRateLimitPerSecond: 1000 },
      fraud: { liveVerification: 'per_number', velocity: { perNumber: { limit: 2, windowSeconds: 600 } } },
      security: { masterKey: newKey.toString('hex'), previousMasterKeys: [oldKey.toString('hex')] },
    });
    // Before: an engine on the old key alone (same Redis prefix).
    engine = await startTestEngine({ ...config, security: { ...config.security, masterKey: oldKey.toString('hex'), previousMasterKeys: [] } }, 'api');
    const a = await engine.account({ balance: 5 });
    const verify = (phone: string) => http(`${engine!.url}/v1/verify`, { auth: a.auth, body: { phone_number: phone } });
    // +447700900331: its per-number window is full (2 sends, each cancelled so that no live pointer blocks the next).
    for (let i = 0; i < 2; i++) {
      const r = await verify('+447700900331');
      expect(r.status).toBe(201);
      expect((await http(`${engine.url}/v1/verify/${String(r.body.request_id)}/cancel`, { auth: a.auth, method: 'POST' })).status).toBe(200);
    }
    // +447700900332: a live verification.
    const live = await verify('+447700900332');
    expect(live.status).toBe(201);
    // Stopped without the helper's clean-up: the state stays for the next engine (same prefix; afterEach deletes it).
    await engine.engine.stop();
    await engine.redis.quit();

    // After the rotation: the same state applies.
    engine = await startTestEngine(config, 'api');
    const full = await verify('+447700900331');
    expect([full.status, full.body.error]).toEqual([429, 'rate_limited']);
    expect(String(full.body.message)).toMatch(/per_number|number/);
    const pending = await verify('+447700900332');
    expect([pending.status, pending.body.error, pending.body.request_id]).toEqual([409, 'verification_pending', live.body.request_id]);
    // A number without history is accepted (the engine works), and its state is under the new key's names only.
    expect((await verify('+447700900333')).status).toBe(201);
    const oldSealer = new Sealer(oldKey);
    expect(await engine.redis.exists(engine.keys.liveVerification(oldSealer.mac('live', `${a.account_id}:+447700900332`)))).toBe(0);
    expect(await engine.redis.exists(engine.keys.liveVerification(new Sealer(newKey).mac('live', `${a.account_id}:+447700900332`)))).toBe(1);
  });

  it('account fraud overrides sealed under the old key (or in clear, by an earlier version) still apply, and are sealed again under the new key', async () => {
    const oldKey = randomBytes(32);
    const newKey = randomBytes(32);
    engine = await startTestEngine(testConfig({ security: { masterKey: newKey.toString('hex'), previousMasterKeys: [oldKey.toString('hex')] } }), 'api');
    const t = engine;
    const underOldKey = await t.account({ balance: 5 });
    const inClear = await t.account({ balance: 5 });
    const overrides = (n: string) => JSON.stringify({ testNumbers: [{ number: `+44770090${n}`, code: '2468' }] });
    await t.redis.hset(t.keys.account(underOldKey.account_id), 'fraud', new Sealer(oldKey).seal(overrides('0341'), 'account-fraud'));
    await t.redis.hset(t.keys.account(inClear.account_id), 'fraud', overrides('0342'));
    for (const [a, n] of [[underOldKey, '0341'], [inClear, '0342']] as const) {
      // The account's own test number: free, verified with its fixed code.
      const r = await http(`${t.url}/v1/verify`, { auth: a.auth, body: { phone_number: `+44770090${n}` } });
      expect([r.status, r.body.cost]).toEqual([201, { amount: 0, currency: 'GBP' }]);
      const ok = await http(`${t.url}/v1/verify/check`, { auth: a.auth, body: { request_id: r.body.request_id, code: '2468' } });
      expect(ok.body.status).toBe('verified');
      const stored = await waitFor(async () => {
        const v = (await t.redis.hget(t.keys.account(a.account_id), 'fraud'))!;
        return !v.startsWith('{') && t.sealer.isCurrent(v) ? v : undefined;
      }, 3000);
      expect(new Sealer(newKey).open(stored, 'account-fraud')).toBe(overrides(n));
    }
  });

  it('a CLI cooldown set before a rotation still holds the CLI after it', async () => {
    const oldKey = randomBytes(32);
    const newKey = randomBytes(32);
    const redis = new Redis(REDIS_URL);
    const keys = new Keys(`fvrot-${randomBytes(4).toString('hex')}`);
    try {
      const ranges = [{ prefix: '+44190873', country: 'GB' }];
      const before = new Sealer(oldKey);
      const oldSelector = new RangeSelector(ranges, redis, keys, 60, (cli) => before.mac('cli', cli));
      expect(await oldSelector.reserve('GB', '1234', before.mac('destination', '+447700900340'))).not.toBeNull();

      const after = new Sealer(newKey, [oldKey]);
      const selector = new RangeSelector(ranges, redis, keys, 60, (cli) => after.mac('cli', cli), undefined, (cli) => after.previousMacs('cli', cli));
      const dest = '+447700900340';
      // The only range's CLI with this code is still cooling down towards this number.
      expect(await selector.reserve('GB', '1234', after.mac('destination', dest), after.previousMacs('destination', dest))).toBeNull();
      expect(await redis.ttl(keys.cliCooldown(after.mac('cli', '+441908731234'), after.mac('destination', dest)))).toBeGreaterThan(50);
      // Another number is free.
      const other = '+447700900341';
      expect(await selector.reserve('GB', '1234', after.mac('destination', other), after.previousMacs('destination', other))).not.toBeNull();
    } finally {
      await deletePrefix(redis, keys.prefix);
      await redis.quit();
    }
  });

  it('without the previous key, old records do not open (the reason to keep it listed)', () => {
    const oldKey = randomBytes(32);
    const sealed = new Sealer(oldKey).seal('+447700900323', 'phone:x');
    expect(() => new Sealer(randomBytes(32)).open(sealed, 'phone:x')).toThrow(/unknown key/);
    expect(new Sealer(randomBytes(32), [oldKey]).open(sealed, 'phone:x')).toBe('+447700900323');
    const mac = new Sealer(oldKey).mac('code', 'r:1234');
    expect(new Sealer(randomBytes(32)).matches('code', 'r:1234', mac)).toBe(false);
    expect(new Sealer(randomBytes(32), [oldKey]).matches('code', 'r:1234', mac)).toBe('previous');
  });
});
