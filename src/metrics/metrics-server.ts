import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Metrics } from './metrics.js';
import { withDeadline } from '../async/time-limit.js';

export type ReadinessProbes = Record<string, () => boolean | Promise<boolean>>;

export interface MetricsServerOptions {
  host: string;
  port: number;
  /** Undefined: /metrics answers 404 (config `metrics.enabled: false`), health still served. */
  metrics: Metrics | undefined;
  /** Each true when healthy; /readyz is 200 only when all are. */
  readiness: ReadinessProbes;
  logger: Logger;
}

/**
 * The operator listener of processes without the API (`--role worker`):
 * `GET /metrics`, `/healthz` (process up) and `/readyz` (every probe), on
 * `metrics.host:metrics.port`. No auth: firewall it like the API's /metrics.
 */
export class MetricsServer {
  private readonly server: Server;

  constructor(private readonly options: MetricsServerOptions) {
    this.server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      const send = (status: number, type: string, body: string): void => {
        res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
        res.end(body);
      };
      const json = (status: number, body: unknown): void => send(status, 'application/json; charset=utf-8', JSON.stringify(body));
      if (req.method !== 'GET' && req.method !== 'HEAD') return json(405, { error: 'method_not_allowed' });
      if (path === '/healthz') return json(200, { status: 'ok' });
      if (path === '/readyz') {
        void runReadiness(this.options.readiness).then(({ ready, checks }) =>
          json(ready ? 200 : 503, { status: ready ? 'ready' : 'not_ready', checks }),
        );
        return;
      }
      const metrics = this.options.metrics;
      if (path === '/metrics' && metrics) {
        metrics.render().then(
          (text) => send(200, metrics.contentType, text),
          (err: Error) => {
            this.options.logger.warn({ err: err.message }, 'metrics collection failed');
            json(500, { error: 'internal_error' });
          },
        );
        return;
      }
      json(404, { error: 'not_found', message: `no route ${req.method} ${path}` });
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.options.port, this.options.host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
  }

  /** e.g. http://127.0.0.1:9464 */
  get url(): string {
    const a = this.server.address() as AddressInfo;
    return `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/**
 * Runs every probe; a probe that throws, or has not answered within
 * `timeoutMs` (a Redis that hangs rather than refuses), counts as not ready,
 * so /readyz always answers.
 */
export async function runReadiness(
  probes: ReadinessProbes,
  timeoutMs = 1000,
): Promise<{ ready: boolean; checks: Record<string, boolean> }> {
  const checks: Record<string, boolean> = {};
  await Promise.all(
    Object.entries(probes).map(async ([name, probe]) => {
      const answer = withDeadline(Promise.resolve().then(probe), timeoutMs, () => new Error(`no answer within ${timeoutMs} ms`));
      checks[name] = await answer.catch(() => false);
    }),
  );
  return { ready: Object.values(checks).every(Boolean), checks };
}
