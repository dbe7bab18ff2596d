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
  /** The status answered; 0 for a request left unanswered (`hang`). */
  answered: number;
  /** Which connection it came on (index in `Receiver.sockets`). */
  socket: number;
}

/** A webhook receiver on loopback that checks signatures exactly as the docs tell customers to. */
export class Receiver {
  readonly received: Received[] = [];
  private server: Server | undefined;
  /** Statuses to answer, in order; then `otherwise`. */
  script: number[] = [];
  /** The status answered once the script is spent. */
  otherwise = 200;
  /** Picks the status for a request by its body, before the script; undefined leaves it to the script. */
  answer: ((json: Record<string, unknown>) => number | undefined) | undefined;
  secret = '';
  /** Every connection accepted, in order. */
  readonly sockets: Socket[] = [];
  /** Reset a connection's second request unanswered (a server whose idle timeout fires as the request arrives). */
  dropReused = false;
  /** Requests so reset (not in `received`). */
  dropped = 0;
  /** Record requests and never answer them (a receiver stuck behind a dead backend). */
  hang = false;
  /** Answer each request this long after it came (a slow receiver). */
  delayMs = 0;
  /** Requests left unanswered and still open; the most open at once; those the sender closed unanswered. */
  open = 0;
  maxOpen = 0;
  abandoned = 0;
  /** Called with each request as it is recorded, before it is answered. */
  onRequest: ((r: Received) => void) | undefined;
  private readonly served = new WeakSet<Socket>();

  /** Listens on `port` (0: any free one) and returns the webhook URL. */
  async start(port = 0): Promise<string> {
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
        const json = JSON.parse(body.toString('utf8')) as Record<string, unknown>;
        const expected = Buffer.from('sha256=' + createHmac('sha256', this.secret).update(body).digest('hex'));
        const given = Buffer.from(String(req.headers['x-flashverify-signature'] ?? ''));
        const answered = this.hang ? 0 : (this.answer?.(json) ?? this.script.shift() ?? this.otherwise);
        const received: Received = {
          body,
          json,
          headers: req.headers,
          signatureValid: expected.length === given.length && timingSafeEqual(expected, given),
          answered,
          socket: this.sockets.indexOf(req.socket),
        };
        this.received.push(received);
        this.onRequest?.(received);
        const reply = () => void res.writeHead(answered, { 'content-type': 'text/plain' }).end('ok');
        if (answered && this.delayMs) return void setTimeout(reply, this.delayMs);
        if (answered) return reply();
        this.open++;
        this.maxOpen = Math.max(this.maxOpen, this.open);
        res.on('close', () => {
          this.open--;
          this.abandoned++;
        });
      });
    });
    this.server.on('connection', (socket: Socket) => this.sockets.push(socket));
    await new Promise<void>((r) => this.server!.listen(port, '127.0.0.1', r));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/hooks/flashverify`;
  }

  forRequest(id: string): Received[] {
    return this.received.filter((r) => r.json.request_id === id);
  }

  /** The requests answered 2xx: the deliveries, as the sender counts them. */
  accepted(): Received[] {
    return this.received.filter((r) => r.answered >= 200 && r.answered <= 299);
  }

  /** The events delivered (answered 2xx) for a verification, in the order they came. */
  events(requestId: string): string[] {
    return this.accepted()
      .filter((r) => r.json.request_id === requestId)
      .map((r) => String(r.json.event));
  }

  /** The event ids delivered (answered 2xx), each once however often it came. */
  delivered(): Set<string> {
    return new Set(this.accepted().map((r) => String(r.headers['x-flashverify-event-id'])));
  }

  async stop(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise((r) => this.server!.close(r));
    this.server = undefined;
  }
}
