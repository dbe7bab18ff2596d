/**
 * A webhook receiver on loopback that checks signatures exactly as the docs tell customers to, records what it
 * got and on which connection, and answers scripted statuses.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface Received {
  body: Buffer;
  json: Record<string, unknown>;
  headers: IncomingHttpHeaders;
  /** The docs' PHP check: hash_equals('sha256=' . hash_hmac('sha256', $body, $secret), $header). */
  signatureValid: boolean;
  answered: number;
  /** Which connection it came on (index in `Receiver.sockets`). */
  socket: number;
}

/** A webhook receiver on loopback that checks signatures exactly as the docs tell customers to. */
export class Receiver {
  readonly received: Received[] = [];
  private server: Server | undefined;
  /** Statuses to answer, in order; then 200. */
  script: number[] = [];
  secret = '';
  /** Every connection accepted, in order. */
  readonly sockets: Socket[] = [];
  /** Reset a connection's second request unanswered (a server whose idle timeout fires as the request arrives). */
  dropReused = false;
  /** Requests so reset (not in `received`). */
  dropped = 0;
  private readonly served = new WeakSet<Socket>();

  async start(): Promise<string> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (this.served.has(req.socket) && this.dropReused) {
          this.dropped++;
          req.socket.destroy();
          return;
        }
        this.served.add(req.socket);
        const body = Buffer.concat(chunks);
        const expected = Buffer.from('sha256=' + createHmac('sha256', this.secret).update(body).digest('hex'));
        const given = Buffer.from(String(req.headers['x-flashverify-signature'] ?? ''));
        const answered = this.script.shift() ?? 200;
        this.received.push({
          body,
          json: JSON.parse(body.toString('utf8')) as Record<string, unknown>,
          headers: req.headers,
          signatureValid: expected.length === given.length && timingSafeEqual(expected, given),
          answered,
          socket: this.sockets.indexOf(req.socket),
        });
        res.writeHead(answered, { 'content-type': 'text/plain' }).end('ok');
      });
    });
    this.server.on('connection', (socket: Socket) => this.sockets.push(socket));
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/hooks/flashverify`;
  }

  forRequest(id: string): Received[] {
    return this.received.filter((r) => r.json.request_id === id);
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise((r) => this.server?.close(r));
  }
}
