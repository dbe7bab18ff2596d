import { createHmac } from 'node:crypto';
import { request as httpRequest, type Agent } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { AppError } from '../errors/app-error.js';
import type { WebhookAgents } from './webhook-agents.js';
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

/**
 * POSTs `body` and resolves with the HTTP status. Redirects are not followed
 * (a 3xx is the caller's failure: following one could lead inside our
 * network). The whole exchange up to the status line, name resolution and
 * the wait for a free pooled connection included, must fit in `timeoutMs` (or
 * before `signal` aborts); a timeout says whether the resolver, the pool or
 * the receiver did not answer. Every new connection resolves its name through
 * `guardedLookup`, so the address actually connected to is the one checked
 * (DNS rebinding); a pooled one stays connected to the address checked when
 * it was opened.
 */
export function postWebhook(url: URL, body: string, headers: Record<string, string>, options: PostOptions): Promise<number> {
  const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const signal = options.signal ?? AbortSignal.timeout(options.timeoutMs);
  const guarded = guardedLookup(options.allowPrivate, options.resolveAll);
  // Where the request is, for the timeout's message: waiting for a pooled socket, resolving, or waiting for the answer.
  let waitingForSocket = false;
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
      // Rejected here, not on the request's AbortError: a request queued for a pooled socket emits that only once
      // it gets a socket, which may be never.
      const what = resolving ? `no DNS answer for ${host}` : waitingForSocket ? `no free connection to ${url.host}` : 'no answer';
      reject(new WebhookDeliveryError(`timeout: ${what} within ${options.timeoutMs} ms`));
    };
    if (signal.aborted) return onAbort();
    // Before the request's own listener (added by `request`), so the state above is read before it is torn down.
    signal.addEventListener('abort', onAbort, { once: true });
    let answered = false;
    const attempt = (agent: Agent | false): void => {
      // Without an Agent the request gets its own socket at once: there is no pool to wait for.
      waitingForSocket = agent !== false;
      const req = send(
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
      req.on('socket', () => (waitingForSocket = false));
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (signal.aborted || answered) return; // onAbort said why; or the status line is in, and that is the outcome
        // A pooled socket the receiver had closed: once more, on a new connection (its address checked again).
        if (agent && req.reusedSocket && STALE_SOCKET_CODES.has(err.code ?? '')) return attempt(false);
        reject(new WebhookDeliveryError(err.message));
      });
      req.end(body);
    };
    attempt(options.agents?.for(url) ?? false);
  }).finally(() => signal.removeEventListener('abort', onAbort));
}
