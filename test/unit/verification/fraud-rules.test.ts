import { describe, expect, it } from 'vitest';
import { fraudSchema } from '../../../src/config/schema.js';
import { ApiError } from '../../../src/verification/errors.js';
import {
  countryRefusal,
  findTestNumber,
  fraudPolicy,
  lineTypeOf,
  lineTypeRefusal,
  numberPrefix,
  parseClientIp,
  screenDestination,
  screenWorkflow,
} from '../../../src/verification/fraud-rules.js';

const server = fraudSchema.parse({});

describe('fraud rules (pure)', () => {
  it('types numbers with the max metadata; the Ofcom drama range has no type', () => {
    expect(lineTypeOf('+447400123456')).toBe('MOBILE');
    expect(lineTypeOf('+442071234567')).toBe('FIXED_LINE');
    expect(lineTypeOf('+449098790000')).toBe('PREMIUM_RATE');
    expect(lineTypeOf('+448001234567')).toBe('TOLL_FREE');
    expect(lineTypeOf('+447012345678')).toBe('PERSONAL_NUMBER');
    expect(lineTypeOf('+14155552671')).toBe('FIXED_LINE_OR_MOBILE');
    expect(lineTypeOf('+447700900000')).toBeUndefined();
  });

  it('refuses blocked types for every method, non-mobile for flash calls, unknown types only when configured', () => {
    const p = fraudPolicy(server, undefined);
    expect(lineTypeRefusal(p, 'PREMIUM_RATE', 'sms')).toMatch(/premium-rate/);
    expect(lineTypeRefusal(p, 'FIXED_LINE', 'flash_call')).toMatch(/mobile numbers only/);
    expect(lineTypeRefusal(p, 'FIXED_LINE', 'voice')).toBeUndefined();
    expect(lineTypeRefusal(p, 'VOIP', 'flash_call')).toMatch(/VoIP/);
    expect(lineTypeRefusal(p, 'MOBILE', 'flash_call')).toBeUndefined();
    expect(lineTypeRefusal(p, undefined, 'flash_call')).toBeUndefined();
    const strict = fraudPolicy(server, { lineTypes: { allowUnknown: false } });
    expect(lineTypeRefusal(strict, undefined, 'voice')).toMatch(/cannot be determined/);
    expect(strict.lineTypes.blocked).toContain('PREMIUM_RATE'); // the other keys keep the server's values
  });

  it('country lists: the server lists always apply; an account\'s lists only narrow them', () => {
    const s = fraudSchema.parse({ countries: { deny: ['FR'], allow: [] } });
    expect(countryRefusal(fraudPolicy(s, undefined), 'FR')).toMatch(/not allowed on this service/);
    expect(countryRefusal(fraudPolicy(s, undefined), 'GB')).toBeUndefined();
    // An account allow list cannot lift the server's deny list ...
    expect(countryRefusal(fraudPolicy(s, { countries: { allow: ['FR', 'GB'] } }), 'FR')).toMatch(/not allowed on this service/);
    expect(countryRefusal(fraudPolicy(s, { countries: { allow: ['FR', 'GB'] } }), 'GB')).toBeUndefined();
    expect(countryRefusal(fraudPolicy(s, { countries: { allow: ['FR', 'GB'] } }), 'US')).toMatch(/for this account/);
    // ... nor an account deny list replace it.
    expect(countryRefusal(fraudPolicy(s, { countries: { deny: ['GB'] } }), 'FR')).toMatch(/on this service/);
    expect(countryRefusal(fraudPolicy(s, { countries: { deny: ['GB'] } }), 'GB')).toMatch(/for this account/);
    // A server allow list holds too: an account may not add a country to it.
    const only = fraudSchema.parse({ countries: { allow: ['GB'] } });
    expect(countryRefusal(fraudPolicy(only, { countries: { allow: ['GB', 'US'] } }), 'US')).toMatch(/on this service/);
    expect(() => screenDestination(fraudPolicy(s, undefined), { e164: '+33612345678', country: 'FR' }, 'sms')).toThrow(ApiError);
  });

  it('shared-cost numbers are refused, for flash calls as for every method', () => {
    const p = fraudPolicy(server, undefined);
    // UK 084x/087x are "service charge" numbers, typed premium-rate by the metadata; France 0810, Spain 901 are shared-cost.
    expect(lineTypeOf('+448451234567')).toBe('PREMIUM_RATE');
    expect(lineTypeOf('+33810123456')).toBe('SHARED_COST');
    expect(lineTypeOf('+34901123456')).toBe('SHARED_COST');
    for (const m of ['flash_call', 'voice', 'sms'] as const) {
      expect(() => screenDestination(p, { e164: '+33810123456', country: 'FR' }, m)).toThrow(/shared-cost number is not accepted/);
      expect(() => screenDestination(p, { e164: '+448451234567', country: 'GB' }, m)).toThrow(/premium-rate number is not accepted/);
    }
  });

  it('a workflow is screened step by step up front: a flash step to a landline is refused naming the step, the default workflow leaves it out', () => {
    const p = fraudPolicy(server, undefined);
    const landline = { e164: '+442071234567', country: 'GB' };
    // The customer's own workflow: 400 naming the first flash step, wherever it is.
    expect(() => screenWorkflow(p, landline, ['flash_call', 'voice', 'sms'], 'refuse')).toThrow(/workflow\[0\] \(flash_call\): flash calls go to mobile numbers only/);
    expect(() => screenWorkflow(p, landline, ['sms', 'flash_call'], 'refuse')).toThrow(/workflow\[1\] \(flash_call\)/);
    expect(() => screenWorkflow(p, landline, ['sms', 'flash_call'], 'refuse')).toThrow(ApiError);
    // "auto": the server's default workflow runs without its flash steps.
    expect([...screenWorkflow(p, landline, ['flash_call', 'voice', 'sms'], 'leave_out')]).toEqual(['flash_call']);
    expect(() => screenWorkflow(p, landline, ['flash_call'], 'leave_out')).toThrow(/workflow\[0\] \(flash_call\)/);
    expect([...screenWorkflow(p, landline, ['voice', 'sms'], 'refuse')]).toEqual([]);
    expect([...screenWorkflow(p, { e164: '+447400123456', country: 'GB' }, ['sms', 'flash_call'], 'refuse')]).toEqual([]);
    // Rules of every method refuse the whole request.
    expect(() => screenWorkflow(p, { e164: '+449098790000', country: 'GB' }, ['voice', 'sms'], 'leave_out')).toThrow(/premium-rate/);
    expect(() => screenWorkflow(p, { e164: '+33810123456', country: 'FR' }, ['voice', 'sms'], 'refuse')).toThrow(/shared-cost/);
    const denied = fraudPolicy(fraudSchema.parse({ countries: { deny: ['GB'] } }), undefined);
    expect(() => screenWorkflow(denied, landline, ['voice'], 'refuse')).toThrow(/country GB/);
  });

  it('merges velocity per window, test numbers from both, and parses client_ip', () => {
    const p = fraudPolicy(fraudSchema.parse({ testNumbers: [{ number: '+447700900999', code: '1234' }] }), {
      velocity: { perIp: { limit: 1, windowSeconds: 5 } },
      testNumbers: [{ number: '+447700900998', code: '123456' }],
    });
    expect(p.velocity.perIp).toEqual({ limit: 1, windowSeconds: 5 });
    expect(p.velocity.perNumber).toEqual(server.velocity.perNumber);
    expect(findTestNumber(p, '+447700900998')?.code).toBe('123456');
    expect(findTestNumber(p, '+447700900999')?.code).toBe('1234');
    expect(findTestNumber(p, '+447700900997')).toBeUndefined();
    expect(numberPrefix('+447700900123')).toBe('+44770090');
    expect(parseClientIp('2001:DB8::1')).toBe('2001:db8::/64');
    expect(parseClientIp(undefined)).toBeUndefined();
    expect(() => parseClientIp('300.1.1.1')).toThrow(/IPv4 or IPv6/);
  });
});

describe('client_ip: one client, one counter', () => {
  it('every spelling of an address counts as one: IPv4-mapped as IPv4, IPv6 by its /64 in RFC 5952 form', () => {
    for (const ip of ['192.0.2.1', '::ffff:192.0.2.1', '::ffff:c000:201', '::FFFF:192.0.2.1']) expect(parseClientIp(ip)).toBe('192.0.2.1');
    for (const ip of ['2001:db8::1', '2001:DB8::1', '2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8:0:0::1', '2001:db8::abcd:1']) {
      expect(parseClientIp(ip)).toBe('2001:db8::/64');
    }
    expect(parseClientIp('2001:db8:1:2:3:4:5:6')).toBe('2001:db8:1:2::/64');
    expect(() => parseClientIp('2001:db8::/64')).toThrow(/client_ip must be an IPv4 or IPv6 address/);
  });
});
