import { createHmac } from 'node:crypto';
import { request as httpRequest, type Agent, type ClientRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { AppError } from '../errors/app-error.js';
import type { WebhookAgents, WebhookConnection } from './webhook-agents.js';
import { SlotsClosedError } from './webhook-slots.js';
import { guardedLookup, type ResolveAll } from './webhook-target.js';

/** A delivery that did not get a 2xx in time; BullMQ retries it with back-off. */
export class WebhookDeliveryError extends AppError {
  constructor(message: string) {
    super('webhook_delivery_failed', message);
  }
}

/**
 * `X-FlashVerify-Signature` (FlashVerify docs, "Verifying Webhook Signatures"):
 * `sha256=` + hex HMAC-SHA256 of the exact raw body, keyed with the API secret.
 */
export function signWebhook(body: string, secret: string): string {
  return 'sha256=' + createHmac('sha256', secret).update(body, 'utf8').digest('hex');
}

export interface PostOptions {
  timeoutMs: number;
  allowPrivate: boolean;
  userAgent?: string;
  /** Name resolution (default: the system's); every address it gives is checked at connect time. */
  resolveAll?: ResolveAll;
  /**
   * The delivery's deadline, when it started before this request (the processor's check of the target): the
   * lookup, connect and response must all fit in it. Default: `timeoutMs` from now.
   */
  signal?: AbortSignal;
  /** Keep-alive connection pools to reuse (webhook-agents.ts); without them, one connection per delivery. */
  agents?: WebhookAgents;
}

/**
 * Errors of a reused keep-alive socket that the receiver closed as we sent on it (its idle timeout raced our
 * request): nothing was answered, so the request is sent again, once, on a new connection (Node's documented
 * pattern, http `request.reusedSocket`). 'socket hang up' carries ECONNRESET.
 */
const STALE_SOCKET_CODES = new Set(['ECONNRESET', 'EPIPE']);

/** A deadline that fired; `what` did not answer (the resolver, the pool or the receiver). */
function timeout(what: string, timeoutMs: number): WebhookDeliveryError {
  return new WebhookDeliveryError(`timeout: ${what} within ${timeoutMs} ms`);
}

/**
 * POSTs `body` and resolves with the HTTP status. Redirects are not followed
 * (a 3xx is the caller's failure: following one could lead inside our
 * network). The whole exchange up to the status line, name resolution and
 * the wait for a free pooled connection included, must fit in `timeoutMs` (or
 * before `signal` aborts); a timeout says whether the resolver, the pool or
 * the receiver did not answer. The wait for a connection is a slot of the
 * origin (`WebhookAgents.connection`), held until the delivery has ended:
 * its answer read, an error, or the deadline. Every new connection resolves its name through
 * `guardedLookup`, so the address actually connected to is the one checked
 * (DNS rebinding); a pooled one stays connected to the address checked when
 * it was opened.
 */
export async function postWebhook(url: URL, body: string, headers: Record<string, string>, options: PostOptions): Promise<number> {
  const signal = options.signal ?? AbortSignal.timeout(options.timeoutMs);
  if (signal.aborted) throw timeout('no answer', options.timeoutMs); // spent before it got here (the target's check)
  // The wait for a free connection (webhook-slots.ts): only the deadline ends it early, and the delivery leaves the queue.
  const agents = options.agents;
  const connection = agents
    ? await agents.connection(url, signal).catch((err: unknown) => {
        // Stopping: not the receiver's failure (no breaker count); BullMQ retries it, from another process if need be.
        if (err instanceof SlotsClosedError) throw err;
        // How full the origin is, so an operator sees a receiver too slow for webhooks.maxSocketsPerHost at once.
        const { held, waiting } = agents.originUsage(url);
        throw timeout(`no free connection to ${url.host} (${held} busy, ${waiting} more waiting)`, options.timeoutMs);
      })
    : { agent: false as const, release: () => undefined };
  return send(url, body, headers, options, signal, connection);
}

/** The request, on a connection of `connection.agent`; its slot is released when the delivery's last request closes. */
function send(url: URL, body: string, headers: Record<string, string>, options: PostOptions, signal: AbortSignal, connection: WebhookConnection): Promise<number> {
  const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const guarded = guardedLookup(options.allowPrivate, options.resolveAll, signal);
  // Where the request is, for the timeout's message: resolving the host, or waiting for the answer.
  let resolving = false;
  const lookup: typeof guarded = (hostname, lookupOptions, callback) => {
    resolving = true;
    guarded(hostname, lookupOptions, (...args) => {
      resolving = false;
      callback(...args);
    });
  };
  let onAbort = (): void => undefined;
  return new Promise<number>((resolve, reject) => {
    onAbort = () => {
      // Rejected here, not on the request's AbortError, to say which part did not answer.
      reject(timeout(resolving ? `no DNS answer for ${host}` : 'no answer', options.timeoutMs));
    };
    if (signal.aborted) {
      connection.release();
      return onAbort();
    }
    // Before the request's own listener (added by `request`), so the state above is read before it is torn down.
    signal.addEventListener('abort', onAbort, { once: true });
    let answered = false;
    const attempt = (agent: Agent | false): void => {
      // The Agent never queues a request (the slot was the wait): it gives a pooled socket or opens one at once.
      let req: ClientRequest;
      try {
        req = request(
          url,
          {
            method: 'POST',
            headers: {
              ...headers,
              'content-length': String(Buffer.byteLength(body)),
              'user-agent': options.userAgent ?? 'flashverify-webhooks',
            },
            lookup: lookup as never,
            agent,
            signal,
          },
          (res) => {
            answered = true;
            resolve(res.statusCode ?? 0);
            res.resume();
            res.on('error', () => undefined);
          },
        );
      } catch (err) {
        // Not made (a header value Node refuses): no 'close' will come to release the slot.
        connection.release();
        return reject(err as Error);
      }
      let retried = false;
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (signal.aborted || answered) return; // onAbort said why; or the status line is in, and that is the outcome
        // A pooled socket the receiver had closed: once more, on a new connection (its address checked again).
        if (agent && req.reusedSocket && STALE_SOCKET_CODES.has(err.code ?? '')) {
          retried = true;
          return attempt(false);
        }
        reject(new WebhookDeliveryError(err.message));
      });
      // 'close' is a request's last event, after its 'error' if any: the answer read (its socket back in the pool,
      // just after this), the connection failed or closed, or the deadline. The retry holds the slot on.
      req.on('close', () => {
        if (!retried) connection.release();
      });
      req.end(body);
    };
    attempt(connection.agent);
  }).finally(() => signal.removeEventListener('abort', onAbort));
}
