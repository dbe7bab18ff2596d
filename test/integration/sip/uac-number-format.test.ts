/**
 * A trunk that wants its numbers otherwise than E.164 (national called numbers, CLIs without +, a tech prefix): what
 * a SIPp far end receives in the INVITE, and that the call goes on as any other.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { EmbeddedSipOriginator } from '../../../src/sip/embedded-originator.js';
import { sipUriUser, startSippUas, type SippUas } from '../../helpers/sipp.js';
import { flashCall, startLoopbackUac, trunk } from './helpers.js';

describe('embedded UAC: number formats per trunk, against SIPp', () => {
  let sipp: SippUas | undefined;
  let sip: EmbeddedSipOriginator | undefined;

  afterEach(async () => {
    await sip?.stop();
    await sipp?.stop();
    sip = undefined;
    sipp = undefined;
  });

  it('national called number behind a tech prefix, CLI without +: Request-URI, To, From and P-Asserted-Identity as the trunk wants them; the call rings and is cancelled', async () => {
    sipp = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'udp' });
    sip = await startLoopbackUac({ transports: ['udp'], t1Ms: 500 });
    const carrier = trunk(sipp.uri, { calledNumberFormat: 'national', callingNumberFormat: 'e164_no_plus', techPrefix: '1234#' });
    expect(await flashCall(sip, carrier)).toEqual(['provisional 180', 'cancelled', 'ended']);
    expect((await sipp.waitForExit(10_000)).code).toBe(0);
    const [invite] = sipp.requests('INVITE');
    expect(invite?.startLine).toBe(`INVITE sip:1234%2307700900123@127.0.0.1:${sipp.port} SIP/2.0`);
    expect(invite?.header('to')).toBe(`<sip:1234%2307700900123@127.0.0.1:${sipp.port}>`);
    expect(sipUriUser(invite?.header('from') ?? '')).toBe('441234567890');
    expect(invite?.header('from')).not.toContain('user=phone');
    expect(sipUriUser(invite?.header('p-asserted-identity') ?? '')).toBe('441234567890');
    // The CANCEL names the same Request-URI (RFC 3261 9.1).
    expect(sipp.requests('CANCEL')[0]?.startLine).toBe(`CANCEL sip:1234%2307700900123@127.0.0.1:${sipp.port} SIP/2.0`);
  });
});
