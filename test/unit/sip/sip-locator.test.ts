import { describe, expect, it } from 'vitest';
import { naptrCandidates, orderSrv, srvCandidates, srvNameFor, SrvTargets, type NaptrRecord, type SrvTarget } from '../../../src/sip/sip-locator.js';
import type { Destination } from '../../../src/sip/transport.js';

const t = (name: string, priority: number, weight: number): SrvTarget => ({ name, port: 5060, priority, weight });

describe('RFC 3263 / RFC 2782 server location', () => {
  it('asks SRV only for a host name without a port, under the transport\'s service (RFC 3263 4.2)', () => {
    expect(srvNameFor('udp', 'carrier.example.net', false)).toBe('_sip._udp.carrier.example.net');
    expect(srvNameFor('tcp', 'carrier.example.net', false)).toBe('_sip._tcp.carrier.example.net');
    expect(srvNameFor('tls', 'carrier.example.net', false)).toBe('_sips._tcp.carrier.example.net');
    expect(srvNameFor('udp', 'carrier.example.net', true)).toBeUndefined();
    expect(srvNameFor('udp', '192.0.2.1', false)).toBeUndefined();
    expect(srvNameFor('udp', '2001:db8::1', false)).toBeUndefined();
    expect(srvNameFor('udp', 'localhost', false)).toBeUndefined();
  });

  it('orders by priority, lowest first, whatever the weights', () => {
    const order = orderSrv([t('c', 30, 100), t('a', 10, 0), t('b', 20, 100)]).map((r) => r.name);
    expect(order).toEqual(['a', 'b', 'c']);
  });

  it('within a priority, picks first by weight (RFC 2782): 3:1 weights lead about 3 times in 4', () => {
    const records = [t('light', 10, 10), t('heavy', 10, 30)];
    let heavyFirst = 0;
    for (let i = 0; i < 4000; i++) if (orderSrv(records)[0]?.name === 'heavy') heavyFirst++;
    expect(heavyFirst / 4000).toBeGreaterThan(0.7);
    expect(heavyFirst / 4000).toBeLessThan(0.8);
    // Every record appears once; the random draw decides only the order.
    expect(orderSrv(records, () => 0).map((r) => r.name)).toEqual(['light', 'heavy']);
    expect(orderSrv(records, () => 0.99).map((r) => r.name)).toEqual(['heavy', 'light']);
  });

  it('hands a request every target once (RFC 3263 4.3): the unmarked in order, then the marked; no address or the same address again: passed over', async () => {
    const addresses: Record<string, string | undefined> = { a: '10.0.0.1', b: '10.0.0.2', gone: undefined, c: '10.0.0.3', again: '10.0.0.1' };
    const looked: string[] = [];
    const targets = new SrvTargets(
      ['a', 'b', 'gone', 'c', 'again'].map((name, i) => t(name, 10 * (i + 1), 0)),
      async (target) => {
        looked.push(target.name);
        const host = addresses[target.name];
        return host === undefined ? undefined : { protocol: 'udp', host, port: target.port };
      },
      (d: Destination) => d.host === '10.0.0.2',
    );
    const handed: (string | undefined)[] = [];
    expect(targets.more).toBe(true);
    for (let d = await targets.next(); d !== undefined; d = await targets.next()) handed.push(d.host);
    expect(handed).toEqual(['10.0.0.1', '10.0.0.3', '10.0.0.2']);
    expect(targets.more).toBe(false);
    // Addresses are looked up as the request gets to each target, not all at once.
    expect(looked).toEqual(['a', 'b', 'gone', 'c', 'again']);
  });

  it('NAPTR (RFC 3263 4.1): flag s and a service the scheme allows, by order then preference; the rest passed over', () => {
    const n = (order: number, preference: number, service: string, replacement: string, flags = 's', regexp = ''): NaptrRecord => ({ order, preference, service, replacement, flags, regexp });
    const records = [
      n(30, 10, 'SIP+D2U', '_sip._udp.carrier.test'),
      n(10, 20, 'SIP+D2T', '_sip._tcp.b.carrier.test.'),
      n(10, 10, 'sip+d2t', '_sip._tcp.a.carrier.test', 'S'),
      n(5, 10, 'SIPS+D2T', '_sips._tcp.carrier.test'),
      n(1, 10, 'SIP+D2S', '_sip._sctp.carrier.test'),
      n(1, 10, 'SIP+D2W', '_sip._ws.carrier.test'),
      n(1, 10, 'SIP+D2U', 'carrier.test', 'a'),
      n(1, 10, 'SIP+D2U', '', 'u', '!^.*$!sip:x@carrier.test!'),
      n(1, 10, 'SIP+D2U', '.'),
      n(1, 10, 'E2U+sip', '_sip._udp.other.test'),
    ];
    // A sip: URI: UDP and TCP only (never moved to TLS by DNS, SCTP and WebSocket not spoken); the trailing dot dropped.
    expect(naptrCandidates(records, 'sip')).toEqual([
      { protocol: 'tcp', srvName: '_sip._tcp.a.carrier.test' },
      { protocol: 'tcp', srvName: '_sip._tcp.b.carrier.test' },
      { protocol: 'udp', srvName: '_sip._udp.carrier.test' },
    ]);
    // A sips: URI: TLS only (RFC 3263 4.1: a SIPS URI discards the SIP+D2X services).
    expect(naptrCandidates(records, 'sips')).toEqual([{ protocol: 'tls', srvName: '_sips._tcp.carrier.test' }]);
    expect(naptrCandidates([], 'sip')).toEqual([]);
  });

  it('no NAPTR record: SRV of each transport in this client\'s order, UDP then TCP for sip:, TLS for sips:', () => {
    expect(srvCandidates('carrier.test', 'sip')).toEqual([
      { protocol: 'udp', srvName: '_sip._udp.carrier.test' },
      { protocol: 'tcp', srvName: '_sip._tcp.carrier.test' },
    ]);
    expect(srvCandidates('carrier.test', 'sips')).toEqual([{ protocol: 'tls', srvName: '_sips._tcp.carrier.test' }]);
  });
});
