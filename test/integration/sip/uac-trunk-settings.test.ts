/**
 * Per-trunk settings a carrier's interconnect asks for, against a SIPp far end:
 *  - number formats (`calledNumberFormat`, `callingNumberFormat`, `techPrefix`): what the INVITE carries;
 *  - an outbound proxy (`proxy`: an SBC in front of the carrier): the INVITE, its CANCEL and the ACK of its 487 go to
 *    the proxy with `Route: <proxy;lr>`, the Request-URI stays the trunk's (RFC 3261 8.1.2, 9.1, 17.1.1.3); an OPTIONS
 *    ping goes the same way.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { EmbeddedSipOriginator } from '../../../src/sip/embedded-originator.js';
import { distinctTransactions, sipUriUser, startSippUas, type SippUas } from '../../helpers/sipp.js';
import { flashCall, startLoopbackUac, testLogger, trunk } from './helpers.js';

describe('embedded UAC: per-trunk number formats and outbound proxy, against SIPp', () => {
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

  it.each(['udp', 'tcp'] as const)('%s: the call goes to the proxy with a Route naming it, the Request-URI and To keep the carrier; CANCEL and ACK carry the Route', async (transport) => {
    sipp = await startSippUas({ scenario: 'uas-ring-cancel', transport });
    sip = await startLoopbackUac({ transports: ['udp', 'tcp'], t1Ms: 500 });
    const proxy = `sip:127.0.0.1:${sipp.port}${transport === 'tcp' ? ';transport=tcp' : ''}`;
    // carrier.invalid resolves nowhere: only the proxy is ever looked up.
    expect(await flashCall(sip, trunk('sip:carrier.invalid', { proxy }))).toEqual(['provisional 180', 'cancelled', 'ended']);
    expect((await sipp.waitForExit(10_000)).code).toBe(0);
    const [invite] = distinctTransactions(sipp.requests('INVITE'));
    expect(invite?.startLine).toBe('INVITE sip:+447700900123@carrier.invalid;user=phone SIP/2.0');
    expect(invite?.header('to')).toBe('<sip:+447700900123@carrier.invalid;user=phone>');
    expect(invite?.header('route')).toBe(`<${proxy};lr>`);
    expect(invite?.header('via')).toMatch(transport === 'tcp' ? /^SIP\/2\.0\/TCP / : /^SIP\/2\.0\/UDP /);
    expect(sipp.requests('CANCEL')[0]?.header('route')).toBe(`<${proxy};lr>`);
    expect(sipp.requests('ACK')[0]?.header('route')).toBe(`<${proxy};lr>`);
  });

  it('an OPTIONS ping to the trunk goes through its proxy too; a proxy that says ;lr already is not given a second one', async () => {
    sipp = await startSippUas({ scenario: 'uas-options', transport: 'udp' });
    sip = await startLoopbackUac({ transports: ['udp'], t1Ms: 500 });
    const proxy = `sip:127.0.0.1:${sipp.port};lr`;
    expect(await sip.ping({ trunk: trunk('sip:carrier.invalid', { proxy }), timeoutMs: 2000, logger: testLogger })).toMatchObject({ outcome: 'answered', status: 200 });
    expect((await sipp.waitForExit(10_000)).code).toBe(0);
    const [options] = sipp.requests('OPTIONS');
    expect(options?.startLine).toBe('OPTIONS sip:carrier.invalid SIP/2.0');
    expect(options?.header('route')).toBe(`<${proxy}>`);
  });
});
