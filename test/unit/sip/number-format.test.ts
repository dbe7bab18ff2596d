import { describe, expect, it } from 'vitest';
import { numberUser } from '../../../src/sip/number-format.js';
import { callAddresses, resolveTrunk } from '../../../src/sip/uac.js';

describe('how a trunk wants its numbers written (sip.trunks[].calledNumberFormat, callingNumberFormat, techPrefix)', () => {
  it('e164 (the default) keeps the + and ;user=phone; e164_no_plus drops the +; national dials it as at home, national prefix included', () => {
    expect(numberUser('+447700900123')).toEqual({ user: '+447700900123', phone: true });
    expect(numberUser('+447700900123', 'e164_no_plus')).toEqual({ user: '447700900123', phone: false });
    expect(numberUser('+447700900123', 'national')).toEqual({ user: '07700900123', phone: false });
    expect(numberUser('+12015550123', 'national')).toEqual({ user: '2015550123', phone: false });
    expect(numberUser('+33612345678', 'national')).toEqual({ user: '0612345678', phone: false });
    // A number libphonenumber cannot place (country code 999 does not exist): digits without the +.
    expect(numberUser('+9991234567', 'national')).toEqual({ user: '9991234567', phone: false });
  });

  it('a tech prefix goes before the called number, # escaped (%23), and the URI is then no telephone number', () => {
    expect(numberUser('+447700900123', 'e164', '1234#')).toEqual({ user: '1234%23+447700900123', phone: false });
    expect(numberUser('+447700900123', 'e164_no_plus', '99')).toEqual({ user: '99447700900123', phone: false });
  });

  it('the Request-URI, To and caller URI of a call to a trunk that wants national called numbers, CLIs without +, and a tech prefix', () => {
    const info = resolveTrunk({
      name: 'carrier',
      uri: 'sip:sbc.carrier.test;transport=tcp',
      cps: 10,
      ringOn183: false,
      dummySdp: false,
      headers: {},
      calledNumberFormat: 'national',
      callingNumberFormat: 'e164_no_plus',
      techPrefix: '1234#',
    });
    expect(callAddresses(info, '+447700900123', '+441908733610')).toEqual({
      requestUri: 'sip:1234%2307700900123@sbc.carrier.test;transport=tcp',
      to: '<sip:1234%2307700900123@sbc.carrier.test>',
      cli: '<sip:441908733610@sbc.carrier.test>',
      callingUser: '441908733610',
    });
    const plain = resolveTrunk({ name: 'plain', uri: 'sip:192.0.2.1:5060', cps: 10, ringOn183: false, dummySdp: false, headers: {} });
    expect(callAddresses(plain, '+447700900123', '+441908733610')).toEqual({
      requestUri: 'sip:+447700900123@192.0.2.1:5060;user=phone',
      to: '<sip:+447700900123@192.0.2.1:5060;user=phone>',
      cli: '<sip:+441908733610@192.0.2.1;user=phone>',
      callingUser: '+441908733610',
    });
  });
});
