/**
 * RFC 3262 reliable provisional responses: the embedded UAC against SIPp far ends that send their 18x reliably
 * (sip-test/uas-100rel-*.xml), over UDP and TCP, and what the INVITE says of 100rel for each `sip.trunks[].rel100`.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { OutboundCall } from '../../../src/sip/call-originator.js';
import type { EmbeddedSipOriginator } from '../../../src/sip/embedded-originator.js';
import { distinctTransactions, startSippUas, type SippUas } from '../../helpers/sipp.js';
import { flashCall, recorder, startLoopbackUac, testLogger, trunk } from './helpers.js';

const CALL = { to: '+447700900123', from: '+441234567890' };

describe('embedded UAC: reliable provisional responses (RFC 3262) against SIPp', () => {
  let sipp: SippUas | undefined;
  let sip: EmbeddedSipOriginator | undefined;

  afterEach(async () => {
    await sip?.stop();
    sip = undefined;
    await sipp?.stop();
    sipp = undefined;
  });

  for (const transport of ['udp', 'tcp'] as const) {
    it(`${transport}: a reliable 183 with an offer and a reliable 180 are each PRACKed once, in order, the offer answered in the first PRACK; the retransmitted 183 is not PRACKed again; CANCEL on the 180`, async () => {
      sipp = await startSippUas({ scenario: 'uas-100rel-ring-cancel', transport });
      sip = await startLoopbackUac({ transports: ['udp', 'tcp'], t1Ms: 500 });
      const rec = recorder();
      let call: OutboundCall | undefined;
      call = sip.originate(
        { ...CALL, trunk: trunk(sipp.uri, { rel100: 'supported' }), logger: testLogger },
        {
          ...rec.delegate,
          // A flash call rings on the 180 (ringOn183 off), and CANCELs flash.ringMs later (300 ms here). SIPp's
          // scenario takes a CANCEL only after the second PRACK's 200 (its steps are in order).
          onProvisional: (status, reason, body) => {
            rec.delegate.onProvisional?.(status, reason, body);
            if (status === 180) setTimeout(() => call?.cancel(), 300);
          },
        },
      );
      await rec.waitFor('ended');
      expect((await sipp.waitForExit(10_000)).code).toBe(0);
      // The 183 is reported once: its retransmission is not processed further.
      expect(rec.events).toEqual([{ type: 'provisional', status: 183 }, { type: 'provisional', status: 180 }, { type: 'cancelled' }, { type: 'ended' }]);
      const [invite] = distinctTransactions(sipp.requests('INVITE'));
      expect(invite?.header('supported')).toBe('100rel');
      const pracks = distinctTransactions(sipp.requests('PRACK'));
      expect(pracks.map((p) => p.header('rack'))).toEqual(['1 1 INVITE', '2 1 INVITE']);
      // In the early dialog: To carries the 183's tag; to the 183's Contact; CSeq after the INVITE's.
      expect(pracks.map((p) => p.header('cseq'))).toEqual(['2 PRACK', '3 PRACK']);
      for (const p of pracks) {
        expect(p.header('to')).toMatch(/;tag=\S+SIPpTag01/);
        expect(p.header('call-id')).toBe(invite?.header('call-id'));
        expect(p.startLine.toLowerCase()).toBe(`prack sip:127.0.0.1:${sipp.port};transport=${transport} sip/2.0`);
      }
      // The 183's offer (our INVITE had none) is answered in its PRACK: the stream declined (port 0).
      expect(pracks[0]?.header('content-type')).toBe('application/sdp');
      expect(pracks[0]?.body).toMatch(/^m=audio 0 RTP\/AVP 0\r?$/m);
      expect(pracks[1]?.body).toBe('');
      // The CANCEL comes after the second PRACK, CSeq of the INVITE.
      expect(distinctTransactions(sipp.requests('CANCEL')).map((c) => c.header('cseq'))).toEqual(['1 CANCEL']);
    });
  }

  it('the offer answered in the PRACK, the 2xx that follows is no new offer: its ACK carries no SDP; then BYE', async () => {
    sipp = await startSippUas({ scenario: 'uas-100rel-answer', transport: 'udp' });
    sip = await startLoopbackUac({ transports: ['udp'], t1Ms: 500 });
    const rec = recorder();
    const call = sip.originate({ ...CALL, trunk: trunk(sipp.uri, { rel100: 'required' }), logger: testLogger }, rec.delegate);
    await rec.waitFor('answered');
    await call.hangup();
    await rec.waitFor('ended');
    expect((await sipp.waitForExit(10_000)).code).toBe(0);
    expect(rec.events.map((e) => e.type)).toEqual(['provisional', 'answered', 'ended']);
    expect(distinctTransactions(sipp.requests('INVITE'))[0]?.header('require')).toBe('100rel');
    const [prack] = distinctTransactions(sipp.requests('PRACK'));
    expect(prack?.body).toMatch(/^m=audio 0 RTP\/AVP 0\r?$/m);
    const [ack] = sipp.requests('ACK');
    expect(ack?.body).toBe('');
    expect(ack?.header('content-type')).toBeUndefined();
    expect(sipp.requests('BYE')).not.toHaveLength(0);
  });

  it('sip.trunks[].rel100: off (the default) says nothing of 100rel, supported sends Supported, required sends Require', async () => {
    const seen: Record<string, { supported: string | undefined; require: string | undefined }> = {};
    sip = await startLoopbackUac({ transports: ['udp'], t1Ms: 500 });
    for (const rel100 of [undefined, 'supported', 'required'] as const) {
      sipp = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'udp' });
      expect(await flashCall(sip, trunk(sipp.uri, rel100 === undefined ? {} : { rel100 }))).toEqual(['provisional 180', 'cancelled', 'ended']);
      expect((await sipp.waitForExit(10_000)).code).toBe(0);
      const [invite] = sipp.requests('INVITE');
      seen[rel100 ?? 'default'] = { supported: invite?.header('supported'), require: invite?.header('require') };
      await sipp.stop();
      sipp = undefined;
    }
    expect(seen).toEqual({
      default: { supported: undefined, require: undefined },
      supported: { supported: '100rel', require: undefined },
      required: { supported: undefined, require: '100rel' },
    });
  });
});
