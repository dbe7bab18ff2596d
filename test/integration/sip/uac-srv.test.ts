/**
 * RFC 3263 server location from the embedded stack against a real DNS server on loopback (dnsmasq): a trunk
 * `sip:trunk.test` (a name, no port) is looked up as SRV `_sip._udp.trunk.test`, and the call goes where it says;
 * a request that fails at one target goes to the next (RFC 3263 4.3), SIPp being the live one.
 */
import dgram from 'node:dgram';
import pino, { type Logger } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Metrics } from '../../../src/metrics/metrics.js';
import type { EmbeddedSipOriginator, EmbeddedSipOriginatorOptions } from '../../../src/sip/embedded-originator.js';
import type { SipDnsOptions } from '../../../src/sip/sip-locator.js';
import { startDnsmasq, type Dnsmasq } from '../../helpers/dnsmasq.js';
import { distinctTransactions, startSippUas, type SippUas } from '../../helpers/sipp.js';
import { startStunnel, TestPki } from '../../helpers/stunnel.js';
import { flashCall, freePort, recorder, startLoopbackUac, testLogger, trunk } from './helpers.js';

const RINGING = ['provisional 180', 'cancelled', 'ended'];
const FAILED_OVER = 'SIP request failed at an SRV target; sent again to the next one';

/** SRV records of trunk.test under `service`, a target per port, in priority order, all on 127.0.0.1. */
const targets = (service: string, ports: number[]): { srv: string[]; hosts: string[] } => ({
  srv: ports.map((port, i) => `${service}.trunk.test,t${i}.trunk.test,${port},${10 * (i + 1)},0`),
  hosts: ports.map((_, i) => `t${i}.trunk.test,127.0.0.1`),
});
const branchOf = (via: string | undefined): string | undefined => /;branch=([^;\s]+)/.exec(via ?? '')?.[1];

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

  const uac = async (
    servers: string[],
    dns: Partial<SipDnsOptions> = {},
    onFailover?: EmbeddedSipOriginatorOptions['onFailover'],
  ): Promise<EmbeddedSipOriginator> => {
    originator = await startLoopbackUac({
      transports: ['udp', 'tcp'],
      t1Ms: 500,
      logger: logger(),
      dns: { servers, cacheMs: 60_000, timeoutMs: 1000, ...dns },
      onFailover,
    });
    return originator;
  };
  const callIds = (): unknown[] => logged('SIP call started').map((l) => l['call_id']);

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

  it('RFC 3263 4.3: the first target a dead UDP port (ICMP unreachable): the same INVITE rings at the second in the same call; the next call starts there', async () => {
    sipp = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'udp', calls: 2 });
    const dead = await freePort();
    dns = await startDnsmasq(targets('_sip._udp', [dead, sipp.port]));
    const metrics = new Metrics({ defaultMetrics: false });
    const sip = await uac([dns.server], {}, (event) => metrics.srvFailover(event));
    const srvTrunk = trunk('sip:trunk.test');
    expect(await flashCall(sip, srvTrunk, logger())).toEqual(RINGING);
    const [first] = callIds();
    expect(logged(FAILED_OVER)).toEqual([
      expect.objectContaining({ trunk: 'test', call_id: first, method: 'INVITE', from: `udp:127.0.0.1:${dead}`, to: `udp:127.0.0.1:${sipp.port}`, reason: 'unreachable' }),
    ]);
    expect(logged('SIP SRV target failed; the next calls try the next target')[0]).toMatchObject({ destination: `udp:127.0.0.1:${dead}`, for_ms: 30_000 });
    expect(await metrics.render()).toContain('flashverify_srv_failovers_total{trunk="test",method="INVITE",reason="unreachable"} 1');
    // The dead target is marked: the next call goes straight to the second.
    expect(await flashCall(sip, srvTrunk, logger())).toEqual(RINGING);
    expect(logged(FAILED_OVER)).toHaveLength(1);
    expect((await sipp.waitForExit(10_000)).code).toBe(0);
    // SIPp saw one INVITE per call, each the call's own.
    expect(distinctTransactions(sipp.requests('INVITE')).map((m) => m.header('call-id'))).toEqual(callIds());
    // One SRV query for both calls: the answer is cached.
    expect(dns.log().match(/query\[SRV\]/g)).toHaveLength(1);
  });

  it('the first target refuses TCP: the INVITE rings at the second over TCP, in the same call', async () => {
    sipp = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'tcp' });
    const dead = await freePort();
    dns = await startDnsmasq(targets('_sip._tcp', [dead, sipp.port]));
    const sip = await uac([dns.server]);
    expect(await flashCall(sip, trunk('sip:trunk.test;transport=tcp'), logger())).toEqual(RINGING);
    expect((await sipp.waitForExit(10_000)).code).toBe(0);
    expect(logged(FAILED_OVER)).toEqual([
      expect.objectContaining({ trunk: 'test', call_id: callIds()[0], from: `tcp:127.0.0.1:${dead}`, to: `tcp:127.0.0.1:${sipp.port}`, reason: 'unreachable' }),
    ]);
    expect(distinctTransactions(sipp.requests('INVITE')).map((m) => m.header('call-id'))).toEqual(callIds());
  });

  it('a 503 from the first target (after its 100 Trying) sends the same INVITE (Call-ID, From tag, CSeq; a new branch) to the second', async () => {
    const unavailable = await startSippUas({ scenario: 'uas-service-unavailable-503', transport: 'udp' });
    try {
      sipp = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'udp' });
      dns = await startDnsmasq(targets('_sip._udp', [unavailable.port, sipp.port]));
      const sip = await uac([dns.server]);
      expect(await flashCall(sip, trunk('sip:trunk.test'), logger())).toEqual(RINGING);
      // The 503 was ACKed (the scenario waits for it), the second target rang.
      expect((await unavailable.waitForExit(10_000)).code).toBe(0);
      expect((await sipp.waitForExit(10_000)).code).toBe(0);
      const [before] = distinctTransactions(unavailable.requests('INVITE'));
      const after = distinctTransactions(sipp.requests('INVITE'));
      expect(after).toHaveLength(1);
      for (const name of ['call-id', 'from', 'to', 'cseq']) expect(after[0]?.header(name)).toBe(before?.header(name));
      expect(branchOf(after[0]?.header('via'))).toMatch(/^z9hG4bK/);
      expect(branchOf(after[0]?.header('via'))).not.toBe(branchOf(before?.header('via')));
      expect(logged(FAILED_OVER)).toEqual([
        expect.objectContaining({ trunk: 'test', call_id: callIds()[0], from: `udp:127.0.0.1:${unavailable.port}`, reason: 'service_unavailable' }),
      ]);
    } finally {
      await unavailable.stop();
    }
  });

  it('a silent first target (not even 100 Trying) is left after sip.dns.targetTimeoutMs, not Timer B; its INVITE is no longer retransmitted', async () => {
    // A black hole: a bound UDP socket that answers nothing (no ICMP either).
    const hole = dgram.createSocket('udp4');
    const arrivals: number[] = [];
    hole.on('message', () => arrivals.push(Date.now()));
    await new Promise<void>((resolve) => hole.bind(0, '127.0.0.1', resolve));
    try {
      sipp = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'udp' });
      dns = await startDnsmasq(targets('_sip._udp', [hole.address().port, sipp.port]));
      const sip = await uac([dns.server], { targetTimeoutMs: 1000 });
      const started = Date.now();
      // flashCall gives up after 10 s: Timer B (32 s) would not do.
      expect(await flashCall(sip, trunk('sip:trunk.test'), logger())).toEqual(RINGING);
      const [moved] = logged(FAILED_OVER);
      expect(moved).toMatchObject({ from: `udp:127.0.0.1:${hole.address().port}`, reason: 'timeout', detail: 'no response within 1000 ms' });
      // Timer A would resend at 1.5 s: wait past it; nothing more reached the hole after the move.
      await new Promise((r) => setTimeout(r, Math.max(0, started + 2000 - Date.now())));
      expect(arrivals.length).toBeGreaterThan(0);
      expect(arrivals.every((t) => t <= Number(moved?.['time']))).toBe(true);
      expect((await sipp.waitForExit(10_000)).code).toBe(0);
    } finally {
      hole.close();
    }
  });

  it('an OPTIONS ping fails over too; with sip.dns.failedTargetMs 0 the dead target is not skipped by the next ping', async () => {
    sipp = await startSippUas({ scenario: 'uas-options', transport: 'udp', calls: 2 });
    const dead = await freePort();
    dns = await startDnsmasq(targets('_sip._udp', [dead, sipp.port]));
    const sip = await uac([dns.server], { failedTargetMs: 0 });
    const results = [];
    for (let i = 0; i < 2; i++) results.push(await sip.ping({ trunk: trunk('sip:trunk.test'), timeoutMs: 2000, logger: logger() }));
    expect(results).toEqual([expect.objectContaining({ outcome: 'answered', status: 200 }), expect.objectContaining({ outcome: 'answered', status: 200 })]);
    expect(logged(FAILED_OVER)).toEqual(
      results.map((r) => expect.objectContaining({ trunk: 'test', call_id: r.callId, method: 'OPTIONS', from: `udp:127.0.0.1:${dead}`, reason: 'unreachable' })),
    );
    expect(logged('SIP SRV target failed; the next calls try the next target')).toHaveLength(0);
    expect((await sipp.waitForExit(10_000)).code).toBe(0);
    expect(distinctTransactions(sipp.requests('OPTIONS')).map((m) => m.header('call-id'))).toEqual(results.map((r) => r.callId));
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
    // RFC 3263 4.1: no NAPTR record, so SRV of each transport (UDP, then TCP); neither exists.
    expect(logged('no SIP SRV record under this name').map((l) => l['srv'])).toEqual(['_sip._udp.trunk.test', '_sip._tcp.trunk.test']);
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

  it('DNS server down: the call fails unreachable within the lookup timeout, with a log line naming the trunk and the question that failed', async () => {
    const sip = await uac([`127.0.0.1:${await freePort()}`]);
    const started = Date.now();
    // No transport in the URI: NAPTR is the first question (RFC 3263 4.1).
    expect(await flashCall(sip, trunk('sip:trunk.test'))).toEqual([expect.stringMatching(/^failed unreachable: DNS lookup of NAPTR trunk\.test failed/), 'ended']);
    // A transport in the URI: SRV of that transport is.
    expect(await flashCall(sip, trunk('sip:trunk.test;transport=udp'))).toEqual([expect.stringMatching(/^failed unreachable: DNS lookup of _sip\._udp\.trunk\.test failed/), 'ended']);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(logged('SIP DNS lookup failed: the call (or ping) to this trunk fails unreachable')).toEqual([
      expect.objectContaining({ trunk: 'test', query: 'NAPTR trunk.test' }),
      expect.objectContaining({ trunk: 'test', query: '_sip._udp.trunk.test' }),
    ]);
    // The trunk's failure, not this side's (CallFailure.local): it counts for the trunk's health and route advance.
    const rec = recorder();
    sip.originate({ to: '+447700900123', from: '+441234567890', trunk: trunk('sip:trunk.test'), logger: testLogger }, rec.delegate);
    const failed = await rec.waitFor('failed');
    expect(failed.type === 'failed' && failed.failure).toMatchObject({ reason: 'unreachable' });
    expect(failed.type === 'failed' && failed.failure.local).toBeUndefined();
    // A stack that is not running fails its calls on this side.
    await sip.stop();
    const stopped = recorder();
    sip.originate({ to: '+447700900123', from: '+441234567890', trunk: trunk('sip:127.0.0.1:5060'), logger: testLogger }, stopped.delegate);
    expect(await stopped.waitFor('failed')).toMatchObject({ failure: { reason: 'unreachable', phrase: 'SIP stack not running', local: true } });
  });

  it('RFC 3263 4.1, no transport in the URI: NAPTR picks TCP and the SRV name to ask; a record whose SRV name has none gives way to the next', async () => {
    sipp = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'tcp' });
    const deadUdp = await freePort();
    dns = await startDnsmasq({
      naptr: [
        // Most preferred, but nothing under its SRV name: passed over.
        'trunk.test,5,10,s,SIP+D2U,,_sip._udp.gone.trunk.test',
        'trunk.test,10,10,s,SIP+D2T,,_sip._tcp.edge.trunk.test',
        // Less preferred, and a dead UDP port: never used.
        'trunk.test,20,10,s,SIP+D2U,,_sip._udp.trunk.test',
        // TLS is not taken for a sip: trunk, SCTP not spoken.
        'trunk.test,1,10,s,SIPS+D2T,,_sips._tcp.trunk.test',
        'trunk.test,1,10,s,SIP+D2S,,_sip._sctp.trunk.test',
      ],
      srv: [`_sip._tcp.edge.trunk.test,edge.trunk.test,${sipp.port},10,0`, `_sip._udp.trunk.test,udp.trunk.test,${deadUdp},10,0`],
      hosts: ['edge.trunk.test,127.0.0.1', 'udp.trunk.test,127.0.0.1'],
    });
    const sip = await uac([dns.server]);
    expect(await flashCall(sip, trunk('sip:trunk.test'), logger())).toEqual(RINGING);
    expect((await sipp.waitForExit(10_000)).code).toBe(0);
    expect(logged('SIP call started')[0]).toMatchObject({ transport: 'tcp', destination: `127.0.0.1:${sipp.port}`, server_name: 'trunk.test' });
    const [invite] = distinctTransactions(sipp.requests('INVITE'));
    expect(invite?.header('via')).toMatch(/^SIP\/2\.0\/TCP /);
    expect(invite?.header('contact')).toMatch(/;transport=tcp/);
    // The Request-URI is the trunk's, without a transport parameter DNS did not put there.
    expect(invite?.startLine).toBe('INVITE sip:+447700900123@trunk.test;user=phone SIP/2.0');
    const queries = dns.log().match(/query\[(NAPTR|SRV)\] \S+/g);
    expect(queries).toEqual(['query[NAPTR] trunk.test', 'query[SRV] _sip._udp.gone.trunk.test', 'query[SRV] _sip._tcp.edge.trunk.test']);
    expect(logged('SIP NAPTR records loaded')[0]).toMatchObject({ naptr: 'trunk.test' });
  });

  it('RFC 3263 4.1: an OPTIONS ping goes where NAPTR says, over TCP, Via and Contact naming TCP', async () => {
    sipp = await startSippUas({ scenario: 'uas-options', transport: 'tcp' });
    dns = await startDnsmasq({
      naptr: ['trunk.test,10,10,S,SIP+D2T,,_sip._tcp.trunk.test', 'trunk.test,20,10,S,SIP+D2U,,_sip._udp.trunk.test'],
      srv: [`_sip._tcp.trunk.test,t0.trunk.test,${sipp.port},10,0`],
      hosts: ['t0.trunk.test,127.0.0.1'],
    });
    const sip = await uac([dns.server]);
    expect(await sip.ping({ trunk: trunk('sip:trunk.test'), timeoutMs: 2000, logger: logger() })).toMatchObject({ outcome: 'answered', status: 200 });
    expect((await sipp.waitForExit(10_000)).code).toBe(0);
    const [options] = distinctTransactions(sipp.requests('OPTIONS'));
    expect(options?.header('via')).toMatch(/^SIP\/2\.0\/TCP /);
    expect(options?.header('contact')).toMatch(/;transport=tcp/);
  });

  it('RFC 3263 4.1, no NAPTR record: SRV of UDP, then of TCP; only _sip._tcp exists, so the call goes over TCP. sip.dns.naptr false: UDP only, and it fails', async () => {
    sipp = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'tcp' });
    dns = await startDnsmasq(targets('_sip._tcp', [sipp.port]));
    let sip = await uac([dns.server]);
    expect(await flashCall(sip, trunk('sip:trunk.test'), logger())).toEqual(RINGING);
    expect((await sipp.waitForExit(10_000)).code).toBe(0);
    expect(logged('SIP call started')[0]).toMatchObject({ transport: 'tcp', destination: `127.0.0.1:${sipp.port}` });
    expect(dns.log().match(/query\[(NAPTR|SRV)\] \S+/g)).toEqual(['query[NAPTR] trunk.test', 'query[SRV] _sip._udp.trunk.test', 'query[SRV] _sip._tcp.trunk.test']);
    await originator?.stop();
    // Off: the URI's own transport only (UDP), no SRV under it and no address for trunk.test: unreachable, no NAPTR asked.
    const asked = dns.log().match(/query\[NAPTR\]/g)?.length;
    sip = await uac([dns.server], { naptr: false });
    expect(await flashCall(sip, trunk('sip:trunk.test'))).toEqual([expect.stringMatching(/^failed unreachable: DNS lookup of trunk\.test failed: no SRV, A or AAAA record/), 'ended']);
    expect(dns.log().match(/query\[NAPTR\]/g)?.length).toBe(asked);
  });
});

async function udpPortFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    s.once('error', () => resolve(false));
    s.bind(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}
