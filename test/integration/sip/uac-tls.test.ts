/**
 * SIP over TLS (RFC 3261 26.2) from the embedded stack to a real far end: SIPp speaks TCP only, so stunnel
 * terminates TLS in front of it, with throwaway certificates made by openssl for this file.
 */
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { createLogger } from '../../../src/logging/logger.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { EmbeddedSipOriginator } from '../../../src/sip/embedded-originator.js';
import type { TlsClientOptions } from '../../../src/sip/tls-transport.js';
import type { TrunkConfig } from '../../../src/config/schema.js';
import { startSippUas, type SippUas } from '../../helpers/sipp.js';
import { startStunnel, TestPki, type Stunnel } from '../../helpers/stunnel.js';
import { flashCall, freePort, recorder, startLoopbackUac, testLogger, trunk } from './helpers.js';

describe('embedded SIP stack over TLS (stunnel in front of SIPp)', () => {
  const pki = new TestPki();
  let trustedServer: { cert: string; key: string };
  let impostor: { cert: string; key: string };
  let client: { cert: string; key: string };
  /** Signed by trunk-ca for the SBC's host name only: a trunk given by address verifies it with tls.serverName. */
  let sbcByName: { cert: string; key: string };
  let originator: EmbeddedSipOriginator | undefined;
  /** The far ends a test started, stopped after it. */
  let ends: FarEnd[] = [];
  let logLines: string[] = [];
  let silentPeers: { server: net.Server; sockets: net.Socket[] }[] = [];

  beforeAll(() => {
    pki.ca('trunk-ca');
    trustedServer = pki.leaf('trunk', 'trunk-ca', 'DNS:localhost,IP:127.0.0.1');
    pki.ca('other-ca');
    impostor = pki.leaf('impostor', 'other-ca', 'DNS:localhost,IP:127.0.0.1');
    pki.ca('client-ca');
    client = pki.leaf('flashverify', 'client-ca', 'DNS:flashverify.test');
    sbcByName = pki.leaf('sbc', 'trunk-ca', 'DNS:sbc.carrier.test');
  });

  afterAll(() => pki.remove());

  afterEach(async () => {
    await originator?.stop();
    originator = undefined;
    for (const end of ends) {
      end.stunnel.stop();
      await end.sipp.stop();
    }
    ends = [];
    for (const { server, sockets } of silentPeers) {
      for (const socket of sockets) socket.destroy();
      server.close();
    }
    silentPeers = [];
    logLines = [];
  });

  // The engine's own logger (its redaction included): what an operator reads.
  const logger = (): Logger => createLogger({ level: 'info', destination: { write: (line: string) => void logLines.push(line) } as unknown as NodeJS.WritableStream });

  /** The stack with `tls` over verification on, 2 s handshakes, 60 s idle; `trunks`' own TLS settings loaded at start. */
  const uac = async (tls: Partial<TlsClientOptions>, trunks?: TrunkConfig[]): Promise<EmbeddedSipOriginator> => {
    originator = await startLoopbackUac({
      transports: ['udp', 'tcp'],
      t1Ms: 500,
      logger: logger(),
      tls: { insecureSkipVerify: false, handshakeTimeoutMs: 2000, idleTimeoutMs: 60_000, ...tls },
      trunks,
    });
    return originator;
  };

  interface FarEnd {
    /** stunnel's TLS port. */
    port: number;
    sipp: SippUas;
    stunnel: Stunnel;
  }

  /**
   * SIPp (uas-ring-cancel unless told) over TCP behind stunnel with `server`'s certificate, asking for a client
   * certificate chaining to `clientCa` when given. The scenario gets the stunnel port as `[tls_port]` (SIPp -key).
   */
  const farEnd = async (
    server: { cert: string; key: string },
    options: { clientCa?: string; calls?: number; scenario?: string } = {},
  ): Promise<FarEnd> => {
    const port = await freePort();
    const sipp = await startSippUas({
      scenario: options.scenario ?? 'uas-ring-cancel',
      transport: 'tcp',
      calls: options.calls ?? 1,
      extraArgs: ['-key', 'tls_port', String(port)],
    });
    const end = { port, sipp, stunnel: await startStunnel({ dir: pki.dir, acceptPort: port, connectPort: sipp.port, cert: server, clientCa: options.clientCa }) };
    ends.push(end);
    return end;
  };

  /** TLS connections stunnel accepted. */
  const accepted = (stunnel: Stunnel): number => stunnel.log().match(/accepted connection/g)?.length ?? 0;

  const flash = (sip: EmbeddedSipOriginator, uri: string): Promise<string[]> => flashCall(sip, trunk(uri));

  /** A TCP listener on loopback that accepts and never answers the ClientHello; closed after the test. */
  const silentPeer = async (): Promise<{ port: number; sockets: net.Socket[] }> => {
    const sockets: net.Socket[] = [];
    const server = net.createServer((socket) => sockets.push(socket));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    silentPeers.push({ server, sockets });
    return { port: (server.address() as net.AddressInfo).port, sockets };
  };

  /** Stunnel's "Connection closed" lines: TLS connections that ended. */
  const closed = (stunnel: Stunnel): number => stunnel.log().match(/Connection closed/g)?.length ?? 0;

  it('a flash call to sips:localhost: INVITE, 180, CANCEL, 487, ACK on one verified TLS connection, Via TLS, sips Contact', async () => {
    const { port, sipp, stunnel } = await farEnd(trustedServer);
    const sip = await uac({ caFile: `${pki.dir}/trunk-ca.pem` });
    expect(await flash(sip, `sips:localhost:${port}`)).toEqual(['provisional 180', 'cancelled', 'ended']);
    expect((await sipp.waitForExit(10_000)).code).toBe(0);
    const received = sipp.received().filter((m) => m.method !== undefined);
    expect(received.map((m) => m.method)).toEqual(['INVITE', 'CANCEL', 'ACK']);
    for (const m of received) expect(m.headers['via']?.[0]).toMatch(/^SIP\/2\.0\/TLS 127\.0\.0\.1:\d+;branch=z9hG4bK\w+;rport;alias$/);
    expect(received[0]?.startLine).toMatch(/^INVITE sips:\+447700900123@localhost:\d+;user=phone SIP\/2\.0$/);
    expect(received[0]?.headers['contact']?.[0]).toMatch(/^<sips:127\.0\.0\.1:\d+>$/);
    expect(received[0]?.headers['to']?.[0]).toMatch(/^<sips:/);
    // SIPp sent 100, 180, 200 (CANCEL) and 487 back over it; stunnel saw one TLS connection for all of it.
    expect(sipp.sent().map((m) => m.status)).toEqual([100, 180, 200, 487]);
    expect(accepted(stunnel), stunnel.log()).toBe(1);
    expect(logLines.join('')).toMatch(/"verified":true.*"msg":"SIP TLS connection up"/);
  });

  it('a certificate from an unknown CA fails the call unreachable with a clear log line; works once that CA is configured', async () => {
    const { port, sipp } = await farEnd(impostor);
    const uri = `sip:localhost:${port};transport=tls`;
    const strict = await uac({ caFile: `${pki.dir}/trunk-ca.pem` });
    const events = await flash(strict, uri);
    expect(events).toEqual([expect.stringMatching(/^failed unreachable: .*(certificate|self.signed)/i), 'ended']);
    const warn = logLines.find((l) => l.includes('SIP TLS certificate invalid'));
    expect(warn).toMatch(/"remote":"localhost:\d+".*"reason":"certificate invalid"/);
    expect(logLines.some((l) => /"trunk":"test".*SIP TLS transport error/.test(l))).toBe(true);
    expect(Object.keys(strict.tlsFailures)).toEqual(['test']);
    expect(sipp.received()).toEqual([]);
    await strict.stop();

    const trusting = await uac({ caFile: `${pki.dir}/other-ca.pem` });
    expect(await flash(trusting, uri)).toEqual(['provisional 180', 'cancelled', 'ended']);
    expect(sipp.received()[0]?.startLine).toMatch(/^INVITE sip:.*;transport=tls SIP\/2\.0$/);
    expect(sipp.received()[0]?.headers['contact']?.[0]).toMatch(/^<sip:127\.0\.0\.1:\d+;transport=tls>$/);
    expect(trusting.tlsFailures).toEqual({});
  });

  it('mutual TLS: a trunk that asks for a client certificate refuses us without one, takes the call with it', async () => {
    const { port, sipp } = await farEnd(trustedServer, { clientCa: `${pki.dir}/client-ca.pem` });
    const uri = `sips:localhost:${port}`;
    const anonymous = await uac({ caFile: `${pki.dir}/trunk-ca.pem` });
    expect(await flash(anonymous, uri)).toEqual([expect.stringMatching(/^failed unreachable: /), 'ended']);
    expect(logLines.find((l) => l.includes('SIP TLS handshake failed'))).toMatch(/"tls_code":"ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED"/);
    expect(Object.keys(anonymous.tlsFailures)).toEqual(['test']);
    await anonymous.stop();

    const withCert = await uac({ caFile: `${pki.dir}/trunk-ca.pem`, certFile: client.cert, keyFile: client.key });
    expect(await flash(withCert, uri)).toEqual(['provisional 180', 'cancelled', 'ended']);
    expect((await sipp.waitForExit(10_000)).code).toBe(0);
  });

  it('a CA bundle with no certificate in it stops the start with a config error (Node would skip it without a word)', async () => {
    const garbage = `${pki.dir}/garbage-ca.pem`;
    writeFileSync(garbage, 'not a certificate\n');
    await expect(uac({ caFile: garbage })).rejects.toThrow(/sip\.tls: cannot load the CA bundle.*no PEM certificate/);
  });

  it('a connection no call needs is closed after idleTimeoutMs; the next call opens a new one', async () => {
    const { port, sipp, stunnel } = await farEnd(trustedServer, { calls: 2 });
    const sip = await uac({ caFile: `${pki.dir}/trunk-ca.pem`, idleTimeoutMs: 300 });
    expect(await flash(sip, `sips:localhost:${port}`)).toEqual(['provisional 180', 'cancelled', 'ended']);
    expect(stunnel.log()).not.toMatch(/Connection closed/);
    await new Promise((r) => setTimeout(r, 900));
    expect(stunnel.log()).toMatch(/Connection closed/);
    expect(await flash(sip, `sips:localhost:${port}`)).toEqual(['provisional 180', 'cancelled', 'ended']);
    expect((await sipp.waitForExit(10_000)).code).toBe(0);
    expect(accepted(stunnel), stunnel.log()).toBe(2);
  });

  it('a peer that never finishes the handshake: unreachable after handshakeTimeoutMs, logged as a handshake timeout', async () => {
    const { port } = await silentPeer();
    const sip = await uac({ handshakeTimeoutMs: 300 });
    expect(await flash(sip, `sips:127.0.0.1:${port}`)).toEqual([expect.stringMatching(/^failed unreachable: TLS handshake with 127\.0\.0\.1:\d+ not finished within 300 ms/), 'ended']);
    expect(logLines.some((l) => /"reason":"handshake timeout"/.test(l))).toBe(true);
  });

  describe('per-trunk settings (sip.trunks[].tls over sip.tls)', () => {
    const rings = ['provisional 180', 'cancelled', 'ended'];

    it('two carriers with their own private CAs: each verified against its own; a trunk whose CA does not match fails unreachable on a connection of its own, the others carry on', async () => {
      // carrier-a's SBC has a certificate from trunk-ca, carrier-b's from other-ca; the stack's own store knows neither.
      const a = await farEnd(trustedServer);
      const b = await farEnd(impostor, { calls: 2 });
      const carrierA = trunk(`sips:localhost:${a.port}`, { name: 'carrier-a', tls: { caFile: `${pki.dir}/trunk-ca.pem` } });
      const carrierB = trunk(`sips:localhost:${b.port}`, { name: 'carrier-b', tls: { caFile: `${pki.dir}/other-ca.pem` } });
      // The same SBC as carrier-b, with carrier-a's CA: its connection must not be carrier-b's verified one.
      const wrongCa = trunk(`sips:localhost:${b.port}`, { name: 'carrier-b-wrong-ca', tls: { caFile: `${pki.dir}/trunk-ca.pem` } });
      const sip = await uac({}, [carrierA, carrierB, wrongCa]);

      expect(await flashCall(sip, carrierB)).toEqual(rings);
      expect(await flashCall(sip, wrongCa)).toEqual([expect.stringMatching(/^failed unreachable: .*certificate/i), 'ended']);
      expect(await flashCall(sip, carrierB)).toEqual(rings);
      expect(await flashCall(sip, carrierA)).toEqual(rings);
      expect((await b.sipp.waitForExit(10_000)).code).toBe(0);
      expect((await a.sipp.waitForExit(10_000)).code).toBe(0);
      // carrier-b's two calls on its one connection, and the refused one of carrier-b-wrong-ca.
      expect(accepted(b.stunnel), b.stunnel.log()).toBe(2);
      expect(accepted(a.stunnel), a.stunnel.log()).toBe(1);
      expect(Object.keys(sip.tlsFailures)).toEqual(['carrier-b-wrong-ca']);
      const logs = logLines.join('');
      expect(logs).toMatch(/"trunk":"carrier-b-wrong-ca".*"reason":"certificate invalid","ca_file":"[^"]*\/trunk-ca\.pem".*"msg":"SIP TLS certificate invalid"/);
      expect(logs).toMatch(/"trunk":"carrier-b-wrong-ca".*"msg":"SIP TLS transport error; calls on it fail unreachable"/);
      expect(logs).toMatch(/"trunk":"carrier-a".*"issuer":"trunk-ca","verified":true,"msg":"SIP TLS connection up"/);
      expect(logs).toMatch(/"trunk":"carrier-b".*"issuer":"other-ca","verified":true,"msg":"SIP TLS connection up"/);
    });

    it('mutual TLS for one trunk: its own client certificate is presented (CA from sip.tls); a trunk to the same SBC without one is refused on its own connection', async () => {
      const end = await farEnd(trustedServer, { clientCa: `${pki.dir}/client-ca.pem`, calls: 2 });
      const mtls = trunk(`sips:localhost:${end.port}`, { name: 'carrier-mtls', tls: { certFile: client.cert, keyFile: client.key } });
      const plain = trunk(`sips:localhost:${end.port}`, { name: 'carrier-plain' });
      const sip = await uac({ caFile: `${pki.dir}/trunk-ca.pem` }, [mtls, plain]);

      expect(await flashCall(sip, mtls)).toEqual(rings);
      expect(await flashCall(sip, plain)).toEqual([expect.stringMatching(/^failed unreachable: /), 'ended']);
      expect(await flashCall(sip, mtls)).toEqual(rings);
      expect((await end.sipp.waitForExit(10_000)).code).toBe(0);
      expect(accepted(end.stunnel), end.stunnel.log()).toBe(2);
      expect(logLines.find((l) => l.includes('SIP TLS handshake failed'))).toMatch(/"trunk":"carrier-plain".*"tls_code":"ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED"/);
      expect(Object.keys(sip.tlsFailures)).toEqual(['carrier-plain']);
    });

    it('a trunk given by address whose SBC certificate names only its host name: verified against tls.serverName', async () => {
      const end = await farEnd(sbcByName);
      const byAddress = trunk(`sips:127.0.0.1:${end.port}`, { name: 'by-address' });
      const named = trunk(`sips:127.0.0.1:${end.port}`, { name: 'by-address-named', tls: { serverName: 'sbc.carrier.test' } });
      const sip = await uac({ caFile: `${pki.dir}/trunk-ca.pem` }, [byAddress, named]);

      expect(await flashCall(sip, byAddress)).toEqual([expect.stringMatching(/^failed unreachable: .*127\.0\.0\.1/), 'ended']);
      expect(logLines.find((l) => l.includes('SIP TLS certificate invalid'))).toMatch(/"trunk":"by-address".*"tls_code":"ERR_TLS_CERT_ALTNAME_INVALID"/);
      expect(await flashCall(sip, named)).toEqual(rings);
      expect((await end.sipp.waitForExit(10_000)).code).toBe(0);
      expect(logLines.join('')).toMatch(/"trunk":"by-address-named".*"subject":"sbc".*"verified":true,"msg":"SIP TLS connection up"/);
    });

    it('tls.systemCa: the trunk is verified against Node\'s trust store, not sip.tls.caFile: a certificate only that private CA vouches for is refused for it alone, on its own connection', async () => {
      // Both trunks to one SBC whose certificate is from trunk-ca, the stack's private CA: carrier-public is meant for
      // a carrier with a public certificate (sip-tls-system-ca.test.ts has it ring), so trunk-ca must not vouch for it.
      const end = await farEnd(trustedServer);
      const privateCa = trunk(`sips:localhost:${end.port}`, { name: 'carrier-private' });
      const publicCa = trunk(`sips:localhost:${end.port}`, { name: 'carrier-public', tls: { systemCa: true } });
      const sip = await uac({ caFile: `${pki.dir}/trunk-ca.pem` }, [privateCa, publicCa]);

      expect(await flashCall(sip, publicCa)).toEqual([expect.stringMatching(/^failed unreachable: .*certificate/i), 'ended']);
      expect(await flashCall(sip, privateCa)).toEqual(rings);
      expect((await end.sipp.waitForExit(10_000)).code).toBe(0);
      expect(accepted(end.stunnel), end.stunnel.log()).toBe(2);
      expect(Object.keys(sip.tlsFailures)).toEqual(['carrier-public']);
      expect(logLines.find((l) => l.includes('SIP TLS certificate invalid'))).toMatch(/"trunk":"carrier-public".*"ca_file":"Node's trust store"/);
    });

    it('an answered call: the ACK and BYE to the trunk\'s sips: Contact go with the trunk\'s own settings, on its connection', async () => {
      const end = await farEnd(trustedServer, { scenario: fileURLToPath(new URL('./scenarios/uas-answer-sips-contact.xml', import.meta.url)) });
      const carrier = trunk(`sips:localhost:${end.port}`, { name: 'carrier', tls: { caFile: `${pki.dir}/trunk-ca.pem` } });
      const sip = await uac({}, [carrier]);
      const rec = recorder();
      const call = sip.originate(
        { to: '+447700900123', from: '+441234567890', trunk: carrier, logger: testLogger },
        {
          ...rec.delegate,
          onAnswered: (sdp, crossedCancel) => {
            rec.delegate.onAnswered?.(sdp, crossedCancel);
            void call.hangup();
          },
        },
      );
      await rec.waitFor('ended');
      expect(rec.events.map((e) => e.type)).toEqual(['answered', 'ended']);
      expect((await end.sipp.waitForExit(10_000)).code).toBe(0);
      expect(end.sipp.received().map((m) => m.method)).toEqual(['INVITE', 'ACK', 'BYE']);
      // One connection of ours to it, the INVITE's, counted on our side. stunnel's own count once said 3 in a full
      // suite run (not seen alone, nor with the CPU loaded): a connection from elsewhere to a reused port would do that.
      expect(logLines.filter((l) => l.includes('"msg":"SIP TLS connection up"') && l.includes(`:${end.port}"`))).toHaveLength(1);
    });

    it('a trunk\'s own handshakeTimeoutMs: two trunks to one silent peer each give up after their own (not sip.tls\'s 2 s), on connections of their own', async () => {
      const peer = await silentPeer();
      const fast = trunk(`sips:127.0.0.1:${peer.port}`, { name: 'carrier-fast', tls: { handshakeTimeoutMs: 300 } });
      const slow = trunk(`sips:127.0.0.1:${peer.port}`, { name: 'carrier-slow', tls: { handshakeTimeoutMs: 900 } });
      const sip = await uac({}, [fast, slow]);
      const endedFirst: string[] = [];
      const call = async (t: TrunkConfig): Promise<string[]> => {
        const events = await flashCall(sip, t);
        endedFirst.push(t.name);
        return events;
      };

      const [fastEvents, slowEvents] = await Promise.all([call(fast), call(slow)]);
      expect(fastEvents).toEqual([expect.stringMatching(/^failed unreachable: TLS handshake with 127\.0\.0\.1:\d+ not finished within 300 ms/), 'ended']);
      // Had it shared carrier-fast's connection, carrier-slow's call would have failed with it, after 300 ms.
      expect(slowEvents).toEqual([expect.stringMatching(/^failed unreachable: TLS handshake with 127\.0\.0\.1:\d+ not finished within 900 ms/), 'ended']);
      expect(endedFirst).toEqual(['carrier-fast', 'carrier-slow']);
      expect(peer.sockets).toHaveLength(2);
      const logs = logLines.join('');
      expect(logs).toMatch(/"trunk":"carrier-fast".*"reason":"handshake timeout".*within 300 ms/);
      expect(logs).toMatch(/"trunk":"carrier-slow".*"reason":"handshake timeout".*within 900 ms/);
    });

    it('a trunk\'s own idleTimeoutMs: its idle connection is closed after it, while another trunk to the same SBC (idleTimeoutMs 0) keeps its own open', async () => {
      const end = await farEnd(trustedServer, { calls: 4 });
      const brief = trunk(`sips:localhost:${end.port}`, { name: 'carrier-brief', tls: { idleTimeoutMs: 300 } });
      const kept = trunk(`sips:localhost:${end.port}`, { name: 'carrier-kept', tls: { idleTimeoutMs: 0 } });
      const sip = await uac({ caFile: `${pki.dir}/trunk-ca.pem` }, [brief, kept]);

      expect(await flashCall(sip, brief)).toEqual(rings);
      expect(await flashCall(sip, kept)).toEqual(rings);
      expect(accepted(end.stunnel), end.stunnel.log()).toBe(2);
      await new Promise((r) => setTimeout(r, 900));
      // sip.tls.idleTimeoutMs is 60 s here: only carrier-brief's own 300 ms closes a connection this soon.
      expect(closed(end.stunnel)).toBe(1);
      expect(await flashCall(sip, kept)).toEqual(rings);
      expect(accepted(end.stunnel), end.stunnel.log()).toBe(2);
      expect(await flashCall(sip, brief)).toEqual(rings);
      expect(accepted(end.stunnel), end.stunnel.log()).toBe(3);
      expect((await end.sipp.waitForExit(10_000)).code).toBe(0);
    });

    it('a trunk whose own CA bundle or client certificate is no PEM stops the start, naming the trunk', async () => {
      const garbage = `${pki.dir}/garbage.pem`;
      writeFileSync(garbage, 'not a certificate\n');
      const bad = (name: string, tls: TrunkConfig['tls']): TrunkConfig[] => [trunk('sips:localhost:5061', { name: 'fine' }), trunk('sips:localhost:5061', { name, tls })];
      await expect(uac({}, bad('carrier-ca', { caFile: garbage }))).rejects.toThrow(
        /trunk "carrier-ca" \(sip\.trunks\[\]\.tls\): cannot load the CA bundle .*garbage\.pem: no PEM certificate/,
      );
      await expect(uac({}, bad('carrier-cert', { certFile: garbage, keyFile: client.key }))).rejects.toThrow(
        /trunk "carrier-cert" \(sip\.trunks\[\]\.tls\): cannot load the client certificate .*garbage\.pem and its key .*flashverify\.key: .*PEM/,
      );
      expect(originator).toBeUndefined();
    });
  });
});
