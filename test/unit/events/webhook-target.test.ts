import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { signWebhook } from '../../../src/events/webhook-sender.js';
import { assertWebhookTarget, isPrivateAddress, WebhookTargetError } from '../../../src/events/webhook-target.js';
import { orderMember } from '../../../src/events/webhook-queue.js';

describe('webhook targets (SSRF)', () => {
  it('classifies private, loopback, link-local, CGNAT and ULA addresses', () => {
    for (const a of [
      '127.0.0.1', '127.255.0.9', '10.0.0.1', '172.16.0.1', '172.31.255.255', '192.168.0.1', '169.254.169.254',
      '100.64.0.1', '100.127.255.254', '0.0.0.0', '224.0.0.1', '255.255.255.255',
      '::1', '::', 'fc00::1', 'fd12:3456::1', 'fe80::1', 'ff02::1', '::ffff:127.0.0.1', '::ffff:7f00:1', '::ffff:10.0.0.1',
      'not-an-ip',
    ]) {
      expect(isPrivateAddress(a), a).toBe(true);
    }
    for (const a of ['93.184.215.14', '8.8.8.8', '172.32.0.1', '100.128.0.1', '2606:4700::1111', '::ffff:8.8.8.8']) {
      expect(isPrivateAddress(a), a).toBe(false);
    }
  });

  it('refuses non-http schemes and credentials in the URL, and private literals unless allowed', async () => {
    await expect(assertWebhookTarget('gopher://example.com/', true)).rejects.toBeInstanceOf(WebhookTargetError);
    await expect(assertWebhookTarget('https://u:p@example.com/', true)).rejects.toBeInstanceOf(WebhookTargetError);
    await expect(assertWebhookTarget('http://[::1]:8080/', false)).rejects.toThrow(/private address/);
    await expect(assertWebhookTarget('http://127.0.0.1:8080/', true)).resolves.toBeInstanceOf(URL);
  });
});

describe('webhook signature', () => {
  it('is sha256= + hex HMAC-SHA256 of the raw body with the API secret (the docs\' PHP check)', () => {
    const body = '{"event":"verification.delivered","request_id":"a1","phone_number":"+447700900000","method":"flash_call","status":"delivered","timestamp":"2026-03-04T15:00:02Z"}';
    const secret = 'ab'.repeat(32);
    expect(signWebhook(body, secret)).toBe('sha256=' + createHmac('sha256', secret).update(Buffer.from(body)).digest('hex'));
    expect(signWebhook(body, secret)).toMatch(/^sha256=[0-9a-f]{64}$/);
  });

  it('orders stream ids by time then sequence as strings', () => {
    const ids = ['1700000000000-10', '1700000000000-2', '999999999999-0', '1700000000001-0'];
    expect([...ids].sort((a, b) => (orderMember(a) < orderMember(b) ? -1 : 1))).toEqual([
      '999999999999-0',
      '1700000000000-2',
      '1700000000000-10',
      '1700000000001-0',
    ]);
  });
});
