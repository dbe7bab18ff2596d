/**
 * The least SIP a flash call is: INVITE, wait for 180, CANCEL after the ring
 * time, ACK the 487; raw strings over one connected UDP socket, the response
 * read only for its status, Call-ID and To tag. No transactions, no
 * retransmissions, no parser: the floor's signalling cost (bench/floor.ts).
 */
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';

interface Leg {
  to: string;
  branch: string;
  tag: string;
  resolve(ok: boolean): void;
  timer: NodeJS.Timeout;
}

export class FloorSip {
  private readonly socket = dgram.createSocket({ type: 'udp4', recvBufferSize: 4 << 20, sendBufferSize: 4 << 20 });
  private readonly legs = new Map<string, Leg>();
  private localPort = 0;

  constructor(
    private readonly host: string,
    private readonly port: number,
    private readonly ringMs: number,
  ) {}

  async open(): Promise<void> {
    await new Promise<void>((r) => this.socket.bind(0, '127.0.0.1', () => r()));
    await new Promise<void>((r) => this.socket.connect(this.port, this.host, () => r()));
    this.localPort = this.socket.address().port;
    this.socket.on('message', (m) => this.onMessage(m.toString('latin1')));
  }

  /** Resolves true when the call went INVITE → 180 → CANCEL → 487 → ACK, false on a 10 s timeout or another final. */
  call(callId: string, to: string): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const leg: Leg = {
        to,
        branch: `z9hG4bK${randomBytes(6).toString('hex')}`,
        tag: randomBytes(4).toString('hex'),
        resolve,
        timer: setTimeout(() => this.end(callId, false), 10_000 + this.ringMs),
      };
      this.legs.set(callId, leg);
      this.send('INVITE', callId, leg, '');
    });
  }

  close(): void {
    this.socket.close();
  }

  private send(method: string, callId: string, leg: Leg, toTag: string): void {
    const uri = `sip:${leg.to}@${this.host}:${this.port}`;
    this.socket.send(
      `${method} ${uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:${this.localPort};branch=${leg.branch};rport\r\nMax-Forwards: 70\r\n` +
        `From: <sip:+447700900000@127.0.0.1>;tag=${leg.tag}\r\nTo: <${uri}>${toTag}\r\nCall-ID: ${callId}\r\nCSeq: 1 ${method}\r\n` +
        `Contact: <sip:127.0.0.1:${this.localPort}>\r\nContent-Length: 0\r\n\r\n`,
    );
  }

  private end(callId: string, ok: boolean): void {
    const leg = this.legs.get(callId);
    if (!leg) return;
    this.legs.delete(callId);
    clearTimeout(leg.timer);
    leg.resolve(ok);
  }

  private onMessage(m: string): void {
    const status = Number(m.slice(8, 11));
    const i = m.indexOf('\r\nCall-ID: ');
    if (i < 0) return;
    const callId = m.slice(i + 11, m.indexOf('\r\n', i + 11));
    const leg = this.legs.get(callId);
    if (!leg) return;
    const cseq = m.slice(m.indexOf('\r\nCSeq: ') + 8, m.indexOf('\r\n', m.indexOf('\r\nCSeq: ') + 8));
    if (status === 180) {
      leg.timer.refresh();
      setTimeout(() => this.send('CANCEL', callId, leg, ''), this.ringMs);
    } else if (status >= 200 && cseq.endsWith('INVITE')) {
      const t = m.indexOf('\r\nTo: ');
      const toLine = m.slice(t + 6, m.indexOf('\r\n', t + 6));
      const tag = /;tag=[^;\s]+/.exec(toLine)?.[0] ?? '';
      this.send('ACK', callId, leg, tag);
      this.end(callId, status === 487);
    }
  }
}
