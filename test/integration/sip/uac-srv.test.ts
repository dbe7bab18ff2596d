/**
 * RFC 3263 server location from the embedded stack against a real DNS server on loopback (dnsmasq): a trunk
 * `sip:trunk.test` (a name, no port) is looked up as SRV `_sip._udp.trunk.test`, and the call goes where it says.
 */
import dgram from 'node:dgram';
import pino, { type Logger } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { EmbeddedSipOriginator } from '../../../src/sip/embedded-originator.js';
import { startDnsmasq, type Dnsmasq } from '../../helpers/dnsmasq.js';
import { startSippUas, type SippUas } from '../../helpers/sipp.js';
import { startStunnel, TestPki } from '../../helpers/stunnel.js';
import { flashCall, freePort, startLoopbackUac, trunk } from './helpers.js';

const RINGING = ['provisional 180', 'cancelled', 'ended'];

describe('embedded SIP stack: DNS SRV for a trunk host name (RFC 3263, dnsmasq on loopback)', () => {
  let dns: Dnsmasq | undefined;
  let sipp: SippUas | undefined;
  let originator: EmbeddedSipOriginator | undefined;
  let logLines: string[] = [];

  afterEach(async () => {
    await originator?.stop();
    originator = undefined;
    dns?.stop();
    dns = undefined;
    await sipp?.stop();
    sipp = undefined;
    logLines = [];
  });

  const logger = (): Logger => pino({ level: 'info' }, { write: (line: string) => void logLines.push(line) });
  const logged = (msg: string): Record<string, unknown>[] =>
    logLines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['msg'] === msg);

  const uac = async (servers: string[]): Promise<EmbeddedSipOriginator> => {
    originator = await startLoopbackUac({ transports: ['udp', 'tcp'], t1Ms: 500, logger: logger(), dns: { servers, cacheMs: 60_000, timeoutMs: 1000 } });
    return originator;
  };

  it('sip:trunk.test reaches the SIPp UAS on the port its SRV record names (not 5060); TCP the same under _sip._tcp', async () => {
    for (const transport of ['udp', 'tcp'] as const) {
      sipp = await startSippUas({ scenario: 'uas-ring-cancel', transport });
      dns = await startDnsmasq({
        srv: [`_sip._${transport}.trunk.test,sip1.trunk.test,${sipp.port},10,50`],
        hosts: ['sip1.trunk.test,127.0.0.1'],
      });
      const sip = await uac([dns.server]);
      const uri = transport === 'udp' ? 'sip:trunk.test' : 'sip:trunk.test;transport=tcp';
      expect(await flashCall(sip, trunk(uri), logger())).toEqual(RINGING);
      expect((await sipp.waitForExit(10_000)).code).toBe(0);
      // The Request-URI keeps the trunk's name (RFC 3263 only picks the next hop).
      expect(sipp.received()[0]?.startLine).toMatch(/^INVITE sip:\+447700900123@trunk\.test;user=phone/);
      expect(logged('SIP call started')[0]).toMatchObject({ destination: `127.0.0.1:${sipp.port}`, server_name: 'trunk.test' });
      expect(dns.log()).toContain(`query[SRV] _sip._${transport}.trunk.test`);
      await originator?.stop();
      dns.stop();
      await sipp.stop();
      logLines = [];
    }
  });

  it('two targets, the first (priority 10) a dead port: that call fails unreachable, the next goes to the second', async () => {
    sipp = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'udp' });
    const dead = await freePort();
    dns = await startDnsmasq({
      srv: [`_sip._udp.trunk.test,dead.trunk.test,${dead},10,0`, `_sip._udp.trunk.test,live.trunk.test,${sipp.port},20,0`],
      hosts: ['dead.trunk.test,127.0.0.1', 'live.trunk.test,127.0.0.1'],
    });
    const sip = await uac([dns.server]);
    const srvTrunk = trunk('sip:trunk.test');
    expect(await flashCall(sip, srvTrunk)).toEqual([expect.stringMatching(/^failed unreachable: /), 'ended']);
    expect(logged('SIP SRV target failed; the next calls try the next target')[0]).toMatchObject({ destination: `udp:127.0.0.1:${dead}` });
    expect(await flashCall(sip, srvTrunk)).toEqual(RINGING);
    expect((await sipp.waitForExit(10_000)).code).toBe(0);
    // One SRV query for both calls: the answer is cached.
    expect(dns.log().match(/query\[SRV\]/g)).toHaveLength(1);
  });

  it('a target with no address is passed over for the next; an OPTIONS ping is located the same way', async () => {
    sipp = await startSippUas({ scenario: 'uas-options', transport: 'udp' });
    dns = await startDnsmasq({
      srv: ['_sip._udp.trunk.test,gone.trunk.test,5090,10,0', `_sip._udp.trunk.test,live.trunk.test,${sipp.port},20,0`],
      hosts: ['live.trunk.test,127.0.0.1'],
    });
    const sip = await uac([dns.server]);
    const result = await sip.ping({ trunk: trunk('sip:trunk.test'), timeoutMs: 2000, logger: pino({ level: 'silent' }) });
    expect(result).toMatchObject({ outcome: 'answered', status: 200 });
    expect(logged('SIP SRV target has no address; next target')[0]).toMatchObject({ target: 'gone.trunk.test:5090' });
  });

  it('no SRV record: the A record of the host, on port 5060', async () => {
    const free5060 = await udpPortFree(5060);
    if (free5060) sipp = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'udp', port: 5060 });
    dns = await startDnsmasq({ hosts: ['trunk.test,127.0.0.1'] });
    const sip = await uac([dns.server]);
    const events = await flashCall(sip, trunk('sip:trunk.test'), logger());
    expect(logged('SIP call started')[0]).toMatchObject({ destination: '127.0.0.1:5060', server_name: 'trunk.test' });
    expect(logged('no SIP SRV record; using the host on the default port')[0]).toMatchObject({ srv: '_sip._udp.trunk.test' });
    if (free5060) expect(events).toEqual(RINGING);
  });

  it('sips:trunk.test: SRV _sips._tcp, TLS to the target, the certificate checked against trunk.test (RFC 5922 4.1), not the target, with the trunk\'s own CA', async () => {
    const pki = new TestPki();
    pki.ca('ca');
    // Names neither the SRV target nor its address: only the trunk's domain.
    const cert = pki.leaf('trunk', 'ca', 'DNS:trunk.test');
    sipp = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'tcp' });
    const tlsPort = await freePort();
    const stunnel = await startStunnel({ dir: pki.dir, acceptPort: tlsPort, connectPort: sipp.port, cert });
    try {
      dns = await startDnsmasq({ srv: [`_sips._tcp.trunk.test,tls1.trunk.test,${tlsPort},10,0`], hosts: ['tls1.trunk.test,127.0.0.1'] });
      originator = await startLoopbackUac({
        transports: ['udp', 'tcp'],
        t1Ms: 500,
        logger: logger(),
        dns: { servers: [dns.server], cacheMs: 60_000, timeoutMs: 1000 },
        tls: { insecureSkipVerify: false, handshakeTimeoutMs: 2000, idleTimeoutMs: 60_000 },
      });
      // The CA is the trunk's own (sip.trunks[].tls): the located target's connection is made with it too.
      expect(await flashCall(originator, trunk('sips:trunk.test', { tls: { caFile: `${pki.dir}/ca.pem` } }))).toEqual(RINGING);
      expect(logged('SIP TLS connection up')[0]).toMatchObject({ remote: `127.0.0.1:${tlsPort}`, verified: true });
    } finally {
      stunnel.stop();
      pki.remove();
    }
  });

  it('DNS server down: the call fails unreachable within the lookup timeout, with a log line naming the trunk and the SRV name', async () => {
    const sip = await uac([`127.0.0.1:${await freePort()}`]);
    const started = Date.now();
    expect(await flashCall(sip, trunk('sip:trunk.test'))).toEqual([expect.stringMatching(/^failed unreachable: DNS lookup of _sip\._udp\.trunk\.test failed/), 'ended']);
    expect(Date.now() - started).toBeLessThan(3000);
    expect(logged('SIP DNS lookup failed: the call (or ping) to this trunk fails unreachable')[0]).toMatchObject({ trunk: 'test', srv: '_sip._udp.trunk.test' });
  });
});

async function udpPortFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    s.once('error', () => resolve(false));
    s.bind(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}
