import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import { scripts } from '../../src/store/scripts.js';
import { startServiceOnRedis, type ServiceOnRedis } from '../helpers/service-on-redis.js';

/** claimDelivery-1.lua's verdicts for jobs that are not the record's current attempt, on the test Redis. */
describe('claimDelivery-1: a job that is not the current attempt', () => {
  let s: ServiceOnRedis;
  beforeAll(async () => {
    s = await startServiceOnRedis(['flash_call', 'sms']);
  });
  afterAll(async () => s?.stop());

  const claim = (id: string, method: string, step: string) =>
    scripts.claimDelivery.run(s.redis, [s.keys.verification(id)], [method, Date.now(), '', step, 'status']) as Promise<[string, unknown[]]>;

  it("a stale job of step 0 (flash) on a workflow now at step 1 (SMS) is that step's job, not one queued for the wrong method", async () => {
    const account = await new AccountStore(s.redis, s.keys, s.sealer).get(s.account.account_id);
    const created = await s.service.create(account, { phone_number: '+447700900601', method: 'flash_call' });
    const key = s.keys.verification(created.request_id);
    // The workflow moved on to its SMS step.
    await s.redis.hset(key, 'wf_step', '1', 'method', 'sms');
    expect((await claim(created.request_id, 'flash_call', '0'))[0]).toBe('other_step');
    // A job of the current step but another method is still a wrong queue.
    expect((await claim(created.request_id, 'flash_call', '1'))[0]).toBe('other_method');
    expect(await s.redis.hexists(key, 'dial_started')).toBe(0);
  });
});
