import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Account, AccountStore } from '../accounts/account-store.js';
import { fromMicro } from '../accounts/money.js';
import type { Config } from '../config/schema.js';
import type { Metrics } from '../metrics/metrics.js';
import { runReadiness } from '../metrics/metrics-server.js';
import type { Sealer } from '../crypto/sealer.js';
import type { Keys } from '../store/keys.js';
import { isRedisUnavailable, RedisNotAnswering, redisTakesWrites } from '../store/redis.js';
import { scripts } from '../store/scripts.js';
import { ApiError } from '../verification/errors.js';
import { METHODS, utcDay } from '../verification/types.js';
import type { VerificationService } from '../verification/verification-service.js';
import { Idempotency, parseIdempotencyKey, type IdempotencyClaim } from './idempotency.js';
import { adminApi, type FraudAdmin } from './admin.js';
import { TrunkAdmin } from '../engine/trunk-admin.js';
import { openApiDocument } from './openapi.js';
import { consumeRateLimit, RATE_WINDOW_TTL_MS, rateLimitHeaders, rateLimitVerdict } from './rate-limit.js';
import { AuthGuard } from './auth-guard.js';

export interface ApiDeps {
  config: Readonly<Config>;
  redis: Redis;
  keys: Keys;
  /** Seals what the API keeps of a response (Idempotency-Key replays hold the phone number). */
  sealer: Sealer;
  accounts: AccountStore;
  verifications: VerificationService;
  logger: Logger;
  /** Served as `GET /metrics` (unless `metrics.enabled` is false). */
  metrics?: Metrics;
  /** Per-account fraud overrides, for the admin API (`/admin/v1/accounts/:id/fraud`). */
  fraud?: FraudAdmin;
  /** Extra readiness probes (SIP transport ...), each true when healthy. */
  readiness?: Record<string, () => boolean | Promise<boolean>>;
  /** Redis not answering at all (RedisStallWatch, redis.stallAfterMs): /v1 requests get 503 at once. */
  redisStall?: { readonly stalled: boolean };
}

declare module 'fastify' {
  interface FastifyRequest {
    account?: Account;
  }
}

/**
 * Answers an error Node's HTTP server raises on a connection ('clientError'), then closes it: 408 for a request not
 * received in full within http.requestTimeoutMs, 431 for headers over Node's limit, 400 for anything else that is
 * not HTTP. The body is the catalogue's invalid_request (the status says which); nothing from the request is echoed.
 */
function clientErrorAnswer(requestTimeoutMs: number) {
  return function (this: FastifyInstance, err: Error & { code?: string }, socket: Duplex): void {
    // A reset connection has nobody to answer (Node's own handler does the same).
    if (err.code === 'ECONNRESET' || socket.destroyed) return;
    const [status, reason, message] =
      err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'Request Timeout', `the request was not received in full within ${requestTimeoutMs} ms`]
        : err.code === 'HPE_HEADER_OVERFLOW'
          ? [431, 'Request Header Fields Too Large', 'the request headers are too large']
          : [400, 'Bad Request', 'the request is not valid HTTP/1.1'];
    this.log.debug({ err: err.message, err_code: err.code, status }, 'client error: connection answered and closed');
    const body = JSON.stringify(new ApiError('invalid_request', message).toBody());
    if (socket.writable) {
      socket.write(
        `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
    }
    socket.destroy(err);
  };
}

/** A Redis that is down is said at most this often by one api process (with the count of requests it failed meanwhile). */
const REDIS_DOWN_LOG_MS = 5000;

/** The FlashVerify v1 HTTP API. */
export function buildApi(deps: ApiDeps): FastifyInstance {
  const { config, redis, keys, accounts, verifications } = deps;
  const idempotency = new Idempotency(redis, keys, deps.sealer, {
    ttlSeconds: config.api.idempotencyTtlSeconds,
    waitMs: config.api.idempotencyWaitMs,
  });
  const authGuard = new AuthGuard(redis, keys, config.api.authFailures);
  const app = Fastify({
    loggerInstance: deps.logger as unknown as FastifyBaseLogger,
    bodyLimit: config.http.bodyLimitBytes,
    // Fastify's default is none: a stalled body would hold its api.maxInFlight slot for ever.
    requestTimeout: config.http.requestTimeoutMs,
    // Node checks that timeout (and headersTimeout) on a timer, every 30 s unless told: a stalled request would be
    // let go up to 30 s late; a quarter of the timeout, 0.1 to 1 s. Given at creation too, so that Node also lowers
    // headersTimeout (60 s) to it: set only afterwards (as Fastify does), a timeout under headersTimeout never fires.
    http:
      config.http.requestTimeoutMs > 0
        ? { requestTimeout: config.http.requestTimeoutMs, connectionsCheckingInterval: Math.min(1000, Math.max(100, Math.floor(config.http.requestTimeoutMs / 4))) }
        : null,
    // What Node's HTTP parser refuses before Fastify sees a request (a stalled body, oversized headers, bytes that
    // are not HTTP) is answered in the catalogue's {"error", "message"} shape too, not Fastify's own.
    clientErrorHandler: clientErrorAnswer(config.http.requestTimeoutMs),
    trustProxy: config.http.trustProxy,
    // One line per request is too much at thousands of requests/s; errors are logged by the handler.
    logController: new LogController({ disableRequestLogging: true }),
    // Our ids are UUIDs; anything longer is rejected before routing.
    routerOptions: { maxParamLength: 100 },
    // Errors found while routing (bad percent-encoding, an overlong id) answer from our catalogue too, without echoing the URL.
    // A /v1 URL is admitted first, as every /v1 request is (All endpoints require authentication; every response
    // carries the rate-limit headers): no credentials answer 401, not what the URL is.
    frameworkErrors: (err, req, reply) => {
      const apiErr =
        (err as { code?: string }).code === 'FST_ERR_MAX_PARAM_LENGTH'
          ? new ApiError('not_found', 'no such resource (ids are at most 100 characters)')
          : (err as { code?: string }).code === 'FST_ERR_BAD_URL'
            ? new ApiError('invalid_request', 'the URL is not valid (bad percent-encoding)')
            : toApiError(err);
      const send = (e: ApiError): void => {
        for (const [name, value] of Object.entries(e.headers)) void reply.header(name, value);
        void (reply as FastifyReply).status(e.status).send(e.toBody());
      };
      if (!req.url.startsWith('/v1/')) return send(apiErr);
      admitV1(req as FastifyRequest, reply as FastifyReply).then(
        () => send(apiErr),
        (e: Error) => send(toApiError(e)),
      );
    },
  });

  // Fastify reads text/plain bodies as strings: JSON sent as text/plain would be told "the body must be a JSON object"
  // rather than what is wrong, its Content-Type. An empty one is no body (fetch sends `body: ''` as text/plain; the
  // admin API's bodyless POSTs take it).
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser('text/plain', { parseAs: 'string' }, (_req, body, done) => {
    if (body === '') done(null, undefined);
    else done(new ApiError('invalid_request', 'Content-Type must be application/json'), undefined);
  });

  // While Redis is down every request fails the same way: one line (no stack) per REDIS_DOWN_LOG_MS with how many
  // more failed, not an error line with a stack trace per request (thousands a second under load).
  let redisDown = { loggedAt: 0, more: 0 };
  app.setErrorHandler((err: Error & { code?: string; statusCode?: number }, req, reply) => {
    const apiErr = toApiError(err);
    if (apiErr.status >= 500 && isRedisUnavailable(err)) {
      const now = Date.now();
      if (now - redisDown.loggedAt >= REDIS_DOWN_LOG_MS) {
        req.log.warn({ err: err.message, url: req.url, more_since_last_line: redisDown.more }, 'request failed: Redis unavailable (503 service_unavailable)');
        redisDown = { loggedAt: now, more: 0 };
      } else redisDown.more++;
    } else if (apiErr.status >= 500 && !(err instanceof ApiError && apiErr.code === 'service_unavailable')) {
      // A 503 of ours (api.maxInFlight shed, counted in its metric) is no failure to log; anything else is.
      req.log.error({ err, url: req.url }, 'request failed');
    }
    for (const [name, value] of Object.entries(apiErr.headers)) void reply.header(name, value);
    // A 429 of another limit than the key's request rate (a velocity window, max sends): the rate-limit headers the
    // request got on its way in said it had room; they say what Retry-After says, so a client adapting to them waits.
    const retryAfter = Number(apiErr.headers['Retry-After']);
    if (apiErr.status === 429 && retryAfter > 0 && reply.hasHeader('x-ratelimit-limit')) {
      void reply.header('X-RateLimit-Remaining', 0).header('X-RateLimit-Reset', Math.ceil(Date.now() / 1000) + retryAfter);
    }
    void reply.status(apiErr.status).send(apiErr.toBody());
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send({ error: 'not_found', message: `no route ${req.method} ${req.url.split('?')[0]}` });
  });

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    const { ready, checks } = await runReadiness({ redis: () => redisTakesWrites(redis, keys.readyProbe()), ...deps.readiness });
    return reply.status(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not_ready', checks });
  });
  // Prometheus text format, no auth (README "Operating it": firewall it, or metrics.enabled: false).
  const metrics = deps.metrics;
  if (metrics && config.metrics.enabled) {
    app.get('/metrics', async (_req, reply) => reply.type(metrics.contentType).send(await metrics.render()));
  }

  // Public: the contract itself, no credentials needed to read it.
  const openapi = openApiDocument(config);
  app.get('/v1/openapi.json', async () => openapi);

  // Operators' account management behind its own bearer token; every route answers 404 while admin.token is empty.
  app.register(
    adminApi({
      token: config.admin.token,
      accounts,
      defaultCurrency: config.accounts.defaultCurrency,
      fraud: deps.fraud,
      guard: authGuard,
      trunks: new TrunkAdmin(deps.redis, deps.keys, config.sip.trunks, config.sip.trunkLimits === 'cluster'),
    }),
    { prefix: '/admin/v1' },
  );

  // /v1 requests in progress (api.maxInFlight): counted from their first hook until their response has gone out or
  // their connection closed, whichever comes first.
  let inFlight = 0;
  const maxInFlight = config.api.maxInFlight;
  metrics?.watchApiInFlight(() => inFlight);
  /** Every /v1 request, first: the in-flight cap, Basic auth, the key's rate limit (its headers set on `reply`). */
  async function admitV1(req: FastifyRequest, reply: FastifyReply): Promise<void> {
    if (deps.redisStall?.stalled) {
      // Nothing sent to a Redis that answers nothing: no request waits on it, none is created behind its client's back.
      // Answered and logged as any request that found Redis unavailable (503, one warn line per 5 s).
      void reply.header('Retry-After', 1);
      throw new RedisNotAnswering();
    }
    if (maxInFlight > 0 && inFlight >= maxInFlight) {
      metrics?.apiRequestShed();
      void reply.header('Retry-After', 1);
      throw new ApiError('service_unavailable', `too many requests in progress in this server (api.maxInFlight ${maxInFlight}); retry shortly`);
    }
    inFlight++;
    // A response emits 'close' once: after it has been sent, or when its connection closed first.
    reply.raw.once('close', () => inFlight--);
    const pair = basicPair(req.headers.authorization);
    const known = pair && accounts.authenticatedRecently(pair.apiKey, pair.secret);
    if (known) {
      // A pair this process authenticated lately: the address's lock-out and the key's rate limit in one round trip.
      req.account = known;
      await admitKnown(req, reply, known, redis, keys, authGuard, config.api.defaultRateLimitPerSecond);
    } else {
      req.account = await authenticate(req, reply, accounts, authGuard, pair);
      await consumeRateLimit(redis, keys, req.account, config.api.defaultRateLimitPerSecond, (w) => void reply.headers(rateLimitHeaders(w)));
    }
  }
  app.register(
    async (v1) => {
      v1.addHook('onRequest', admitV1);
      v1.addHook('preValidation', async (req) => {
        if (req.routeOptions.url === undefined) return; // no such route: the 404 below, whatever the body
        // Cancel takes no body (an empty JSON object is fine too).
        const bodyless = req.routeOptions.url === '/v1/verify/:id/cancel' && (req.body === undefined || req.body === null);
        if (req.method === 'POST' && !bodyless && (typeof req.body !== 'object' || req.body === null || Array.isArray(req.body))) {
          throw new ApiError('invalid_request', 'the body must be a JSON object');
        }
        // No request of ours nests: a body thousands of levels deep (16 KB is enough) would overflow the stack of
        // what walks it whole (JSON.stringify of an Idempotency-Key fingerprint) and answer 500.
        if (req.body !== undefined && nestedDeeperThan(req.body, MAX_BODY_DEPTH)) {
          throw new ApiError('invalid_request', `the body is nested more than ${MAX_BODY_DEPTH} levels deep`);
        }
      });

      v1.post('/verify', async (req, reply) => {
        const create = async (claim?: IdempotencyClaim) => {
          const body = await verifications.create(req.account!, req.body as Record<string, unknown>, claim);
          // A resend (`resend: true` on a live request) creates nothing: 200 with the live request and its `sends`.
          return { status: 'sends' in body ? 200 : 201, body };
        };
        const key = parseIdempotencyKey(req.headers['idempotency-key']);
        if (key === undefined) {
          const r = await create();
          return reply.status(r.status).send(r.body);
        }
        const r = await idempotency.run(req.account!.account_id, key, req.body, create);
        if (r.replayed) void reply.header('Idempotent-Replayed', 'true');
        return reply.status(r.status).send(r.body);
      });
      v1.post('/verify/check', async (req) => verifications.check(req.account!, req.body as Record<string, unknown>));
      v1.get<{ Params: { id: string } }>('/verify/:id', async (req) => verifications.status(req.account!, req.params.id));
      v1.post<{ Params: { id: string } }>('/verify/:id/cancel', async (req) => verifications.cancel(req.account!, req.params.id));
      v1.get('/balance', async (req) => {
        const a = await accounts.get(req.account!.account_id);
        return { balance: { amount: a.balance, currency: a.currency } };
      });
      v1.get<{ Querystring: { from?: string; to?: string } }>('/usage', async (req) =>
        usage(redis, keys, req.account!, req.query.from, req.query.to),
      );
      // An unknown /v1 route is answered after the hooks above, like every /v1 request: authenticated, counted,
      // with the rate-limit headers.
      v1.setNotFoundHandler((req, reply) => {
        void reply.status(404).send({ error: 'not_found', message: `no route ${req.method} ${req.url.split('?')[0]}` });
      });
    },
    { prefix: '/v1' },
  );
  return app;
}

/** The API key and secret of a Basic Authorization header, or undefined when it is not one. */
function basicPair(header: string | undefined): { apiKey: string; secret: string } | undefined {
  const m = /^Basic ([A-Za-z0-9+/=]+)$/i.exec((header ?? '').trim());
  const decoded = m ? Buffer.from(m[1]!, 'base64').toString('utf8') : '';
  const sep = decoded.indexOf(':');
  return sep > 0 ? { apiKey: decoded.slice(0, sep), secret: decoded.slice(sep + 1) } : undefined;
}

async function authenticate(
  req: FastifyRequest,
  reply: FastifyReply,
  accounts: AccountStore,
  guard: AuthGuard,
  pair: { apiKey: string; secret: string } | undefined,
): Promise<Account> {
  // An address locked out for brute force gets 429 before its credentials are looked at (auth-guard.ts).
  const failures = await guard.checkAddress(req.ip);
  if (pair === undefined) {
    // No Basic credentials at all: nothing guessed, so not counted. Many HTTP clients send a request without them
    // first and only answer the challenge (RFC 7617 2); counted, every such request would bring their address
    // (or a proxy's, every client behind it) nearer the lock-out.
    void reply.header('WWW-Authenticate', 'Basic realm="FlashVerify"');
    void reply.headers(rateLimitHeaders(guard.budget(failures)));
    throw new ApiError('unauthorized');
  }
  const account = await accounts.authenticate(pair.apiKey, pair.secret);
  if (!account) {
    void reply.header('WWW-Authenticate', 'Basic realm="FlashVerify"');
    // Counted atomically per address and per key; slows down, then locks the address out (429 + Retry-After).
    // No key's rate limit applies to a 401: its X-RateLimit-* headers give the address's failure budget.
    const budget = await guard.failed(req.ip, pair.apiKey);
    void reply.headers(rateLimitHeaders(budget));
    throw new ApiError('unauthorized');
  }
  // Pending and suspended accounts may still read; they may not start verifications.
  return account;
}

/**
 * An account known from the auth cache: the address's lock-out (429 as AuthGuard.checkAddress: such a pair is still
 * refused from a locked-out address) and then the key's one-second window, in one script (admitRequest-2).
 */
async function admitKnown(
  req: FastifyRequest,
  reply: FastifyReply,
  account: Account,
  redis: Redis,
  keys: Keys,
  guard: AuthGuard,
  defaultLimit: number,
): Promise<void> {
  const second = Math.floor(Date.now() / 1000);
  const [verdict, n] = (await scripts.admitRequest.run(
    redis,
    [keys.authFailures('ip', req.ip), keys.rateLimit(account.api_key, second)],
    [guard.lockAfter, RATE_WINDOW_TTL_MS],
  )) as [string, number];
  if (verdict === 'locked') throw guard.lockedFor(n);
  rateLimitVerdict(account, defaultLimit, second, n, (w) => void reply.headers(rateLimitHeaders(w)));
}

/** A day's usage hash lives 400 days (verification-service.ts, resend.ts: USAGE_TTL_SECONDS). */
const USAGE_RETENTION_DAYS = 400;

async function usage(redis: Redis, keys: Keys, account: Account, from?: string, to?: string) {
  const day = 24 * 3600 * 1000;
  const parse = (s: string | undefined, name: string, def: number): number => {
    if (s === undefined) return def;
    const ms = /^\d{4}-\d{2}-\d{2}$/.test(s) ? Date.parse(`${s}T00:00:00Z`) : NaN;
    // A day that does not exist (2026-02-30) parses, rolled over into the next month: refused, not read as another.
    if (Number.isNaN(ms) || utcDay(ms) !== s) {
      throw new ApiError('invalid_request', `${name} must be a date in YYYY-MM-DD format`);
    }
    return ms;
  };
  const today = Date.parse(`${utcDay(Date.now())}T00:00:00Z`);
  const toMs = parse(to, 'to', today);
  // The contract: from defaults to 30 days ago. A `to` before that, with no `from`, gets the 30 days up to `to`
  // (the letter would make the range end before it starts).
  const monthAgo = today - 30 * day;
  const fromMs = parse(from, 'from', toMs >= monthAgo ? monthAgo : toMs - 30 * day);
  if (fromMs > toMs) throw new ApiError('invalid_request', 'from must not be after to');

  // Any range (the contract sets no bound); only the days usage is kept for (USAGE_RETENTION_DAYS, up to today)
  // hold anything, so only those are read.
  const pipeline = redis.pipeline();
  const first = Math.max(fromMs, today - USAGE_RETENTION_DAYS * day);
  for (let t = first; t <= Math.min(toMs, today); t += day) pipeline.hgetall(keys.usage(account.account_id, utcDay(t)));
  const rows = ((await pipeline.exec()) ?? []).map(([, r]) => (r ?? {}) as Record<string, string>);
  const byMethod: Record<string, { count: number; cost: number }> = {};
  let total = 0;
  let successful = 0;
  let costMicro = 0;
  for (const m of METHODS) {
    let count = 0;
    let cost = 0;
    for (const r of rows) {
      count += Number(r[`${m}:count`] ?? 0);
      cost += Number(r[`${m}:cost`] ?? 0);
    }
    byMethod[m] = { count, cost: fromMicro(cost) };
    total += count;
    costMicro += cost;
  }
  for (const r of rows) successful += Number(r.verified ?? 0);
  return {
    from: utcDay(fromMs),
    to: utcDay(toMs),
    total_verifications: total,
    successful,
    success_rate: total ? Math.round((successful / total) * 1000) / 10 : 0,
    total_cost: { amount: fromMicro(costMicro), currency: account.currency },
    by_method: byMethod,
  };
}

/** Maps anything thrown to the documented catalogue: a 4xx for bad input, never a stack trace. */
function toApiError(err: Error & { code?: string; statusCode?: number }): ApiError {
  if (err instanceof ApiError) return err;
  switch (err.code) {
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ApiError('invalid_request', 'Content-Type must be application/json');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError('invalid_request', 'the request body is too large');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new ApiError('invalid_request', 'the request body is empty; send a JSON object');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new ApiError('invalid_request', 'Content-Length does not match the body');
  }
  if (err instanceof SyntaxError || err.code === 'FST_ERR_CTP_INVALID_JSON_BODY') {
    return new ApiError('invalid_request', 'the body is not valid JSON');
  }
  if (isRedisUnavailable(err)) {
    return new ApiError('service_unavailable');
  }
  if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
    return new ApiError('invalid_request', err.message);
  }
  return new ApiError('internal_error');
}

/** Nesting a request body may have (objects and arrays within each other): ours have 3 at most (workflow steps). */
const MAX_BODY_DEPTH = 32;

/** Whether `value` has objects or arrays nested more than `max` deep; iterative, so any depth is measured safely. */
function nestedDeeperThan(value: unknown, max: number): boolean {
  const stack: { v: unknown; depth: number }[] = [{ v: value, depth: 0 }];
  while (stack.length > 0) {
    const { v, depth } = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (depth >= max) return true;
    for (const child of Array.isArray(v) ? v : Object.values(v as Record<string, unknown>)) {
      if (child !== null && typeof child === 'object') stack.push({ v: child, depth: depth + 1 });
    }
  }
  return false;
}
