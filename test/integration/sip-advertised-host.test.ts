import { afterEach, describe, expect, it } from 'vitest';
import { engineCluster, type EngineCluster } from '../helpers/engine-process.js';

/**
 * A worker listening on every address (0.0.0.0) with no sip.listen.advertisedHost puts 127.0.0.1 in its Via and
 * Contact: a trunk on another host could not send a 2xx retransmission or an in-dialog BYE anywhere. The worker
 * says so at start, naming the trunks; not when the address is set, nor when every trunk is on loopback.
 */
let cluster: EngineCluster | undefined;
afterEach(async () => {
  await cluster?.cleanup();
  cluster = undefined;
});

const WARNING = 'sip.listen.advertisedHost is not set';

async function workerOutput(listen: Record<string, unknown>, trunkUri: string): Promise<string> {
  cluster = await engineCluster({ sip: { listen: { port: 0, ...listen }, trunks: [{ name: 'carrier', uri: trunkUri }] } });
  const worker = await cluster.start('worker');
  const out = worker.output();
  await cluster.cleanup();
  cluster = undefined;
  return out;
}

describe('sip.listen.advertisedHost', { timeout: 60_000 }, () => {
  it('warns at start when a wildcard listen address would advertise loopback to a trunk elsewhere', async () => {
    const out = await workerOutput({ host: '0.0.0.0' }, 'sip:192.0.2.10:5060');
    const line = out.split('\n').find((l) => l.includes(WARNING));
    expect(line).toBeDefined();
    expect(JSON.parse(line!)).toMatchObject({ level: 40, trunks: ['carrier'], advertised: '127.0.0.1' });
  });

  it('is quiet when the address is set, or when the trunk is on loopback', async () => {
    expect(await workerOutput({ host: '0.0.0.0', advertisedHost: '192.0.2.1' }, 'sip:192.0.2.10:5060')).not.toContain(WARNING);
    expect(await workerOutput({ host: '0.0.0.0' }, 'sip:127.0.0.1:5060')).not.toContain(WARNING);
  });
});
