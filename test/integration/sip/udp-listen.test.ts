import { createSocket, type Socket } from 'node:dgram';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import type { ParsedMessage } from '../../../src/sip/message.js';
import { UdpTransport } from '../../../src/sip/udp-transport.js';
import { findFreePort } from '../../helpers/sipp.js';

const OPTIONS = 'OPTIONS sip:fv@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-probe\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:fv@127.0.0.1>\r\nCall-ID: udp-listen-probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n';

function bound(port: number): Promise<Socket> {
  // What another flashverify's listener is: SO_REUSEADDR, on the configured port.
  const s = createSocket({ type: 'udp4', reuseAddr: true });
  return new Promise((resolve, reject) => {
    s.once('error', reject);
    s.bind(port, '127.0.0.1', () => resolve(s));
  });
}

describe('SIP UDP listener on a configured port', () => {
  it('is refused (EADDRINUSE) while another process holds the port, instead of sharing it and losing datagrams to it', async () => {
    const port = await findFreePort();
    const other = await bound(port);
    const received: ParsedMessage[] = [];
    const udp = new UdpTransport({ host: '127.0.0.1', port, logger: pino({ level: 'silent' }), events: { onMessage: (m) => received.push(m), onDestinationError: () => undefined } });
    try {
      await expect(udp.listen()).rejects.toMatchObject({ code: 'EADDRINUSE', syscall: 'bind' });
    } finally {
      other.close();
    }
    // Once the port is free, the same listener binds it and receives what is sent there.
    await udp.listen();
    try {
      expect(udp.localPort).toBe(port);
      const sender = createSocket('udp4');
      sender.send(OPTIONS, port, '127.0.0.1');
      await expect.poll(() => received.length, { timeout: 2000 }).toBe(1);
      sender.close();
      expect(received[0]!.callId).toBe('udp-listen-probe');
    } finally {
      await udp.close();
    }
  });
});
