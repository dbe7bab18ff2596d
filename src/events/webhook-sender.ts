import { createHmac } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import { AppError } from '../errors/app-error.js';
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
}

/**
 * POSTs `body` and resolves with the HTTP status. Redirects are not followed
 * (a 3xx is the caller's failure: following one could lead inside our
 * network). The whole exchange up to the status line, name resolution
 * included, must fit in `timeoutMs` (or before `signal` aborts); a timeout
 * says whether the resolver or the receiver did not answer. Name resolution
 * goes through `guardedLookup`, so the address actually connected to is the
 * one checked (DNS rebinding).
 */
export function postWebhook(url: URL, body: string, headers: Record<string, string>, options: PostOptions): Promise<number> {
  const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  // An IP literal is not looked up; a name is until the socket's 'lookup' event.
  let resolving = isIP(host) === 0;
  return new Promise((resolve, reject) => {
    const req = send(
      url,
      {
        method: 'POST',
        headers: {
          ...headers,
          'content-length': String(Buffer.byteLength(body)),
          'user-agent': options.userAgent ?? 'flashverify-webhooks',
        },
        lookup: guardedLookup(options.allowPrivate, options.resolveAll) as never,
        // One connection per delivery: no pooled socket outlives the check of its address.
        agent: false,
        signal: options.signal ?? AbortSignal.timeout(options.timeoutMs),
      },
      (res) => {
        resolve(res.statusCode ?? 0);
        res.resume();
        res.on('error', () => undefined);
      },
    );
    req.on('socket', (socket) => socket.once('lookup', () => (resolving = false)));
    req.on('error', (err) => {
      if (err.name !== 'AbortError' && err.name !== 'TimeoutError') return reject(new WebhookDeliveryError(err.message));
      const what = resolving ? `no DNS answer for ${host}` : 'no answer';
      reject(new WebhookDeliveryError(`timeout: ${what} within ${options.timeoutMs} ms`));
    });
    req.end(body);
  });
}
