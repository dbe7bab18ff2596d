import { describe, expect, it } from 'vitest';
import { orderSrv, srvNameFor, SrvTargets, type SrvTarget } from '../../../src/sip/sip-locator.js';
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
});
