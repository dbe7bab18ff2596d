/**
 * Trunks that ask for TLS (`sips:`, `;transport=tls`) on the embedded stack: never sent in clear.
 */
import dgram from 'node:dgram';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { EmbeddedSipOriginator } from '../../../src/sip/embedded-originator.js';
import { freePort, recorder, startLoopbackUac, testLogger, trunk } from './helpers.js';

describe('embedded SIP stack: a trunk that needs TLS', () => {
  let originator: EmbeddedSipOriginator;
  let listener: dgram.Socket | undefined;

  beforeEach(async () => {
    originator = await startLoopbackUac({ transports: ['udp', 'tcp'], t1Ms: 50 });
  });

  afterEach(async () => {
    listener?.close();
    listener = undefined;
    await originator.stop();
  });

  it('refuses the call (and the OPTIONS ping) instead of sending it over UDP in clear', async () => {
    const port = await freePort();
    const received: string[] = [];
    const socket = dgram.createSocket('udp4');
    listener = socket;
    socket.on('message', (m) => received.push(m.toString('latin1').split('\r\n')[0] ?? ''));
    await new Promise<void>((resolve) => socket.bind(port, '127.0.0.1', () => resolve()));
    for (const uri of [`sips:127.0.0.1:${port}`, `sip:127.0.0.1:${port};transport=tls`]) {
      const rec = recorder();
      expect(() =>
        originator.originate({ to: '+447700900123', from: '+441234567890', trunk: trunk(uri), logger: testLogger }, rec.delegate),
      ).toThrow(/trunk test: .* needs SIP over TLS/);
      const ping = await originator.ping({ trunk: trunk(uri), timeoutMs: 200, logger: testLogger });
      expect(ping).toMatchObject({ outcome: 'not_sent', phrase: expect.stringMatching(/needs SIP over TLS/) });
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(received).toEqual([]);
  });
});
