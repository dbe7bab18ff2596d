/**
 * SIP over TLS (RFC 3261 26.2) from the embedded stack to a real far end: SIPp speaks TCP only, so stunnel
 * terminates TLS in front of it, with throwaway certificates made by openssl for this file.
 */
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import pino, { type Logger } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { EmbeddedSipOriginator } from '../../../src/sip/embedded-originator.js';
import type { TlsClientOptions } from '../../../src/sip/tls-transport.js';
import { startSippUas, type SippUas } from '../../helpers/sipp.js';
import { startStunnel, TestPki, type Stunnel } from '../../helpers/stunnel.js';
import { flashCall, freePort, startLoopbackUac, trunk } from './helpers.js';

describe('embedded SIP stack over TLS (stunnel in front of SIPp)', () => {
  const pki = new TestPki();
  let trustedServer: { cert: string; key: string };
  let impostor: { cert: string; key: string };
  let client: { cert: string; key: string };
  let originator: EmbeddedSipOriginator | undefined;
  let sipp: SippUas | undefined;
  let stunnel: Stunnel | undefined;
  let logLines: string[] = [];

  beforeAll(() => {
    pki.ca('trunk-ca');
    trustedServer = pki.leaf('trunk', 'trunk-ca', 'DNS:localhost,IP:127.0.0.1');
    pki.ca('other-ca');
    impostor = pki.leaf('impostor', 'other-ca', 'DNS:localhost,IP:127.0.0.1');
    pki.ca('client-ca');
    client = pki.leaf('flashverify', 'client-ca', 'DNS:flashverify.test');
  });

  afterAll(() => pki.remove());

  afterEach(async () => {
    await originator?.stop();
    originator = undefined;
    stunnel?.stop();
    stunnel = undefined;
    await sipp?.stop();
    sipp = undefined;
    logLines = [];
  });

  const logger = (): Logger => pino({ level: 'info' }, { write: (line: string) => void logLines.push(line) });

  const uac = async (tls: Partial<TlsClientOptions>): Promise<EmbeddedSipOriginator> => {
    originator = await startLoopbackUac({
      transports: ['udp', 'tcp'],
      t1Ms: 500,
      logger: logger(),
      tls: { insecureSkipVerify: false, handshakeTimeoutMs: 2000, idleTimeoutMs: 60_000, ...tls },
    });
    return originator;
  };

  /** SIPp uas-ring-cancel over TCP behind stunnel; returns the TLS port. */
  const farEnd = async (server: { cert: string; key: string }, clientCa?: string, calls = 1): Promise<number> => {
    sipp = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'tcp', calls });
    const tlsPort = await freePort();
    stunnel = await startStunnel({ dir: pki.dir, acceptPort: tlsPort, connectPort: sipp.port, cert: server, clientCa });
    return tlsPort;
  };

  const flash = (sip: EmbeddedSipOriginator, uri: string): Promise<string[]> => flashCall(sip, trunk(uri));

  it('a flash call to sips:localhost: INVITE, 180, CANCEL, 487, ACK on one verified TLS connection, Via TLS, sips Contact', async () => {
    const port = await farEnd(trustedServer);
    const sip = await uac({ caFile: `${pki.dir}/trunk-ca.pem` });
    expect(await flash(sip, `sips:localhost:${port}`)).toEqual(['provisional 180', 'cancelled', 'ended']);
    expect((await sipp!.waitForExit(10_000)).code).toBe(0);
    const received = sipp!.received().filter((m) => m.method !== undefined);
    expect(received.map((m) => m.method)).toEqual(['INVITE', 'CANCEL', 'ACK']);
    for (const m of received) expect(m.headers['via']?.[0]).toMatch(/^SIP\/2\.0\/TLS 127\.0\.0\.1:\d+;branch=z9hG4bK\w+;rport;alias$/);
    expect(received[0]?.startLine).toMatch(/^INVITE sips:\+447700900123@localhost:\d+;user=phone SIP\/2\.0$/);
    expect(received[0]?.headers['contact']?.[0]).toMatch(/^<sips:127\.0\.0\.1:\d+>$/);
    expect(received[0]?.headers['to']?.[0]).toMatch(/^<sips:/);
    // SIPp sent 100, 180, 200 (CANCEL) and 487 back over it; stunnel saw one TLS connection for all of it.
    expect(sipp!.sent().map((m) => m.status)).toEqual([100, 180, 200, 487]);
    expect(stunnel!.log().match(/accepted connection/g)).toHaveLength(1);
    expect(logLines.join('')).toMatch(/"verified":true.*"msg":"SIP TLS connection up"/);
  });

  it('a certificate from an unknown CA fails the call unreachable with a clear log line; works once that CA is configured', async () => {
    const port = await farEnd(impostor);
    const uri = `sip:localhost:${port};transport=tls`;
    const strict = await uac({ caFile: `${pki.dir}/trunk-ca.pem` });
    const events = await flash(strict, uri);
    expect(events).toEqual([expect.stringMatching(/^failed unreachable: .*(certificate|self.signed)/i), 'ended']);
    const warn = logLines.find((l) => l.includes('SIP TLS certificate invalid'));
    expect(warn).toMatch(/"remote":"localhost:\d+".*"reason":"certificate invalid"/);
    expect(logLines.some((l) => /"trunk":"test".*SIP TLS transport error/.test(l))).toBe(true);
    expect(Object.keys(strict.tlsFailures)).toEqual(['test']);
    expect(sipp!.received()).toEqual([]);
    await strict.stop();

    const trusting = await uac({ caFile: `${pki.dir}/other-ca.pem` });
    expect(await flash(trusting, uri)).toEqual(['provisional 180', 'cancelled', 'ended']);
    expect(sipp!.received()[0]?.startLine).toMatch(/^INVITE sip:.*;transport=tls SIP\/2\.0$/);
    expect(sipp!.received()[0]?.headers['contact']?.[0]).toMatch(/^<sip:127\.0\.0\.1:\d+;transport=tls>$/);
    expect(trusting.tlsFailures).toEqual({});
  });

  it('mutual TLS: a trunk that asks for a client certificate refuses us without one, takes the call with it', async () => {
    const port = await farEnd(trustedServer, `${pki.dir}/client-ca.pem`);
    const uri = `sips:localhost:${port}`;
    const anonymous = await uac({ caFile: `${pki.dir}/trunk-ca.pem` });
    expect(await flash(anonymous, uri)).toEqual([expect.stringMatching(/^failed unreachable: /), 'ended']);
    expect(logLines.find((l) => l.includes('SIP TLS handshake failed'))).toMatch(/"code":"ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED"/);
    expect(Object.keys(anonymous.tlsFailures)).toEqual(['test']);
    await anonymous.stop();

    const withCert = await uac({ caFile: `${pki.dir}/trunk-ca.pem`, certFile: client.cert, keyFile: client.key });
    expect(await flash(withCert, uri)).toEqual(['provisional 180', 'cancelled', 'ended']);
    expect((await sipp!.waitForExit(10_000)).code).toBe(0);
  });

  it('a CA bundle with no certificate in it stops the start with a config error (Node would skip it without a word)', async () => {
    const garbage = `${pki.dir}/garbage-ca.pem`;
    writeFileSync(garbage, 'not a certificate\n');
    await expect(uac({ caFile: garbage })).rejects.toThrow(/sip\.tls: cannot load the CA bundle.*no PEM certificate/);
  });

  it('a connection no call needs is closed after idleTimeoutMs; the next call opens a new one', async () => {
    const port = await farEnd(trustedServer, undefined, 2);
    const sip = await uac({ caFile: `${pki.dir}/trunk-ca.pem`, idleTimeoutMs: 300 });
    expect(await flash(sip, `sips:localhost:${port}`)).toEqual(['provisional 180', 'cancelled', 'ended']);
    expect(stunnel!.log()).not.toMatch(/Connection closed/);
    await new Promise((r) => setTimeout(r, 900));
    expect(stunnel!.log()).toMatch(/Connection closed/);
    expect(await flash(sip, `sips:localhost:${port}`)).toEqual(['provisional 180', 'cancelled', 'ended']);
    expect((await sipp!.waitForExit(10_000)).code).toBe(0);
    expect(stunnel!.log().match(/accepted connection/g)).toHaveLength(2);
  });

  it('a peer that never finishes the handshake: unreachable after handshakeTimeoutMs, logged as a handshake timeout', async () => {
    const sockets: net.Socket[] = [];
    const silent = net.createServer((s) => sockets.push(s));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', () => resolve()));
    try {
      const port = (silent.address() as net.AddressInfo).port;
      const sip = await uac({ handshakeTimeoutMs: 300 });
      expect(await flash(sip, `sips:127.0.0.1:${port}`)).toEqual([expect.stringMatching(/^failed unreachable: TLS handshake with 127\.0\.0\.1:\d+ not finished within 300 ms/), 'ended']);
      expect(logLines.some((l) => /"reason":"handshake timeout"/.test(l))).toBe(true);
    } finally {
      for (const s of sockets) s.destroy();
      silent.close();
    }
  });
});
