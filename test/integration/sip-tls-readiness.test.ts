/**
 * An engine whose TLS trunk cannot be reached over TLS says so: /readyz `sip_tls` false, a warn line naming the trunk.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestEngine, testConfig, http, waitFor, type TestEngine } from '../helpers/engine.js';

describe('readiness of a TLS trunk', () => {
  let engine: TestEngine | undefined;
  const sockets: net.Socket[] = [];
  let silent: net.Server | undefined;

  afterEach(async () => {
    await engine?.stop();
    engine = undefined;
    for (const s of sockets) s.destroy();
    silent?.close();
    silent = undefined;
  });

  /**
   * An engine whose TLS trunk `carrier-tls` accepts TCP and never answers the ClientHello (its OPTIONS pings' TLS
   * handshakes time out), with `others` beside it.
   */
  async function engineWithSilentTlsTrunk(others: { name: string; uri: string }[] = []): Promise<TestEngine> {
    const server = net.createServer((s) => sockets.push(s));
    silent = server;
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    const port = (server.address() as net.AddressInfo).port;
    engine = await startTestEngine(
      testConfig({
        sip: {
          trunks: [{ name: 'carrier-tls', uri: `sips:127.0.0.1:${port}`, optionsPingMs: 1000 }, ...others],
          tls: { handshakeTimeoutMs: 200 },
        },
      }),
    );
    return engine;
  }

  it('a TLS trunk whose handshake never finishes: /readyz sip_tls false (503), warn lines name the trunk', async () => {
    const e = await engineWithSilentTlsTrunk();
    const url = e.url;
    const ready = await waitFor(async () => {
      const r = await http(`${url}/readyz`);
      return r.body['checks'] !== undefined && (r.body['checks'] as Record<string, boolean>)['sip_tls'] === false ? r : undefined;
    }, 5000);
    expect(ready.status).toBe(503);
    expect(ready.body['checks']).toMatchObject({ sip: true, sip_tls: false });
    const logs = e.logs.join('');
    expect(logs).toMatch(/"remote":"127\.0\.0\.1:\d+".*"reason":"handshake timeout".*"msg":"SIP TLS handshake timeout"/);
    expect(logs).toMatch(/"trunk":"carrier-tls".*"msg":"SIP TLS transport error; calls on it fail unreachable"/);
  });

  it('one TLS trunk failing among others: still ready (the others carry the calls); the failure is in the log', async () => {
    const e = await engineWithSilentTlsTrunk([{ name: 'other-tls', uri: 'sips:127.0.0.1:9' }]);
    await waitFor(async () => e.logs.some((l) => l.includes('"msg":"SIP TLS handshake timeout"')), 5000);
    const r = await http(`${e.url}/readyz`);
    expect(r.body['checks']).toMatchObject({ sip: true, sip_tls: true });
  });
});
