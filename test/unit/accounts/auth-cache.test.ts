import { describe, expect, it } from 'vitest';
import type { Account } from '../../../src/accounts/account-store.js';
import { AuthCache } from '../../../src/accounts/auth-cache.js';

const account = (id: string, key: string): Account => ({
  account_id: id,
  name: id,
  status: 'active',
  currency: 'GBP',
  balance: 1,
  api_key: key,
  webhook_url: null,
  rate_limit: null,
  sms_templates: {},
  created_at: '',
});

describe('AuthCache', () => {
  const key = 'a'.repeat(32);

  it('keys entries by a salted MAC: never the secret, and another process (salt) gets another slot', () => {
    const c = new AuthCache();
    const slot = c.slot('fv:account:', key, 'the-secret');
    expect(slot).not.toContain('the-secret');
    expect(slot).toBe(c.slot('fv:account:', key, 'the-secret'));
    expect(slot).not.toBe(c.slot('fv:account:', key, 'the-secreT'));
    expect(slot).not.toBe(c.slot('other:account:', key, 'the-secret'));
    expect(slot).not.toBe(new AuthCache().slot('fv:account:', key, 'the-secret'));
  });

  it('reuses a success for its lifetime only', () => {
    const c = new AuthCache();
    const slot = c.slot('p', key, 's');
    c.set(slot, account('acc1', key), 1000, 10_000);
    expect(c.get(slot, 10_999)?.account_id).toBe('acc1');
    expect(c.get(slot, 11_000)).toBeUndefined();
    c.set(slot, account('acc1', key), 0, 10_000);
    expect(c.get(slot, 10_000)).toBeUndefined();
  });

  it('forgets every entry of an account when it changes, or when its key got a 401', () => {
    const c = new AuthCache();
    const s1 = c.slot('p', key, 's1');
    const s2 = c.slot('p', key, 's2');
    const other = c.slot('p', 'b'.repeat(32), 's');
    c.set(s1, account('acc1', key), 1000, 0);
    c.set(s2, account('acc1', key), 1000, 0);
    c.set(other, account('acc2', 'b'.repeat(32)), 1000, 0);
    c.forgetAccount('acc1');
    expect([c.get(s1, 1), c.get(s2, 1), c.get(other, 1)?.account_id]).toEqual([undefined, undefined, 'acc2']);
    c.set(s1, account('acc1', key), 1000, 0);
    c.forgetKey(key);
    expect(c.get(s1, 1)).toBeUndefined();
  });
});
