/**
 * A carrier with a public certificate beside one with a private CA (`sip.tls.caFile`): the public one's trunk says
 * `tls.systemCa: true` and is verified against Node's trust store, which `sip.tls.caFile` replaces for the others.
 * No public CA signs loopback certificates, so the test's own root stands in for one, put in Node's trust store the
 * way an operator adds a root to it (NODE_EXTRA_CA_CERTS): the engine runs as a process of its own for that.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { http, waitFor } from '../helpers/engine.js';
import { engineCluster, type EngineCluster } from '../helpers/engine-process.js';
import { findFreePort, startSippUas, type SippUas } from '../helpers/sipp.js';
import { startStunnel, TestPki, type Stunnel } from '../helpers/stunnel.js';

describe('sip.trunks[].tls.systemCa (engine process, SIPp behind stunnel)', { timeout: 60_000 }, () => {
  const pki = new TestPki();
  let cluster: EngineCluster | undefined;
  let sipp: SippUas | undefined;
  let stunnel: Stunnel | undefined;

  beforeAll(() => {
    pki.ca('carrier-a-ca');
    pki.ca('public-root');
  });

  afterAll(() => pki.remove());

  afterEach(async () => {
    await cluster?.cleanup();
    stunnel?.stop();
    await sipp?.stop();
    cluster = sipp = stunnel = undefined;
  });

  it('with carrier A\'s private CA as sip.tls.caFile, a flash call to carrier B (a certificate from a root in Node\'s store) rings: delivered', async () => {
    const port = await findFreePort();
    sipp = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'tcp', calls: 1, extraArgs: ['-key', 'tls_port', String(port)] });
    const carrierB = pki.leaf('sbc-b', 'public-root', 'DNS:localhost');
    stunnel = await startStunnel({ dir: pki.dir, acceptPort: port, connectPort: sipp.port, cert: carrierB });
    cluster = await engineCluster(
      {
        flash: { ringMs: 200 },
        sip: {
          tls: { caFile: `${pki.dir}/carrier-a-ca.pem`, handshakeTimeoutMs: 2000 },
          trunks: [
            // Carrier B first; carrier A (its SBC not started here) is the failover trunk behind it.
            { name: 'carrier-b', uri: `sips:localhost:${port}`, priority: 0, tls: { systemCa: true } },
            { name: 'carrier-a', uri: 'sips:sbc.carrier-a.test', priority: 1 },
          ],
        },
      },
      { env: { NODE_EXTRA_CA_CERTS: `${pki.dir}/public-root.pem` } },
    );
    const engine = await cluster.start('all');
    const account = await cluster.account(10);
    const r = await http(`${cluster.httpUrl}/v1/verify`, { auth: account.auth, body: { phone_number: '+447700900123', method: 'flash_call' } });
    expect(r.status).toBe(201);
    const id = String(r.body.request_id);

    const done = await waitFor(async () => {
      const s = await http(`${cluster!.httpUrl}/v1/verify/${id}`, { auth: account.auth });
      return s.body.status === 'delivered' || s.body.status === 'failed' ? s.body : undefined;
    }, 20_000, 100);
    expect({ status: done.status, failure_reason: done.failure_reason }).toEqual({ status: 'delivered', failure_reason: undefined });
    expect(await cluster.redis.hget(cluster.keys.verification(id), 'trunk')).toBe('carrier-b');
    expect((await sipp.waitForExit(10_000)).code).toBe(0);
    expect(engine.output()).toMatch(/"trunk":"carrier-b".*"issuer":"public-root","verified":true,"msg":"SIP TLS connection up"/);
  });
});
