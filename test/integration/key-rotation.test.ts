import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import { Sealer } from '../../src/crypto/sealer.js';
import { Keys } from '../../src/store/keys.js';
import { VerificationService } from '../../src/verification/verification-service.js';
import { http, REDIS_URL, startTestEngine, testConfig, type TestEngine } from '../helpers/engine.js';

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
