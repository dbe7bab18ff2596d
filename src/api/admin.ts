import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { AccountNotFoundError, MAX_RATE_LIMIT, type AccountStore } from '../accounts/account-store.js';
import { CURRENCIES, isWholeMicro, type Currency } from '../accounts/money.js';
import { Sealer } from '../crypto/sealer.js';
import { AppError } from '../errors/app-error.js';
import { TrunkNotFoundError, type TrunkAdmin } from '../engine/trunk-admin.js';
import { MAX_WEBHOOK_URL_LENGTH } from '../events/webhook-target.js';
import type { AuthGuard } from './auth-guard.js';
import { ApiError } from '../verification/errors.js';

/** Per-account fraud overrides (verification/fraud-controls.ts). */
export interface FraudAdmin {
  /** `fresh`: from Redis, not from the process's short-lived cache (an operator sees what is stored). */
  overrides(accountId: string, options?: { fresh?: boolean }): Promise<unknown>;
  /** Validates (400 invalid_request) and stores; null removes them. */
  setOverrides(accountId: string, overrides: unknown): Promise<unknown>;
  /** The rules in force: server defaults + overrides. */
  policy(accountId: string): Promise<unknown>;
}

export interface AdminApiOptions {
  /** `admin.token`; empty turns the admin API off (every route answers 404). */
  token: string;
  accounts: AccountStore;
  defaultCurrency: Currency;
  fraud?: FraudAdmin;
  /** The API's brute-force brake (auth-guard.ts): wrong admin tokens count per address, slow down, then lock out. */
  guard: AuthGuard;
  /** SIP trunks taken out of service and back (engine/trunk-admin.ts). */
  trunks?: TrunkAdmin;
}

/** Money as the store keeps it: whole micro-units (at most 6 decimals, as the CLI takes them); nothing rounded away. */
const money = z.number().refine(isWholeMicro, 'at most 6 decimal places (money is kept in millionths)');

const createBody = z
  .object({
    name: z.string().trim().min(1).max(200),
    balance: money.pipe(z.number().nonnegative()).optional(),
    currency: z.enum(CURRENCIES as [Currency, ...Currency[]]).optional(),
    active: z.boolean().optional(),
  })
  .strict();
const topUpBody = z.object({ amount: money.pipe(z.number().positive()) }).strict();
const webhookBody = z.object({ url: z.string().min(1).max(MAX_WEBHOOK_URL_LENGTH).nullable() }).strict();
const smsTemplateBody = z.object({ template: z.string().min(1).max(1000).nullable() }).strict();
const disableTrunkBody = z.object({ reason: z.string().max(200).optional() }).strict();
type TrunkParams = { Params: { trunk: string } };
type LocaleParams = { account_id: string; locale: string };

const rateLimitBody = z
  .object({ requests_per_second: z.number().int().positive().max(MAX_RATE_LIMIT).nullable() })
  .strict();

type Params = { Params: { account_id: string } };

/**
 * The admin HTTP API, mounted under /admin/v1: account management for
 * operators (what `flashverify account ...` does on the command line),
 * authenticated with `Authorization: Bearer <admin.token>`. Errors use the v1
 * catalogue: 401 unauthorized, 404 not_found, 400 invalid_request.
 */
export function adminApi(options: AdminApiOptions): FastifyPluginAsync {
  const { token, accounts } = options;
  return async (admin) => {
    admin.addHook('onRequest', async (req, reply) => {
      // Off: indistinguishable from a route that does not exist.
      if (token === '') {
        throw new ApiError('not_found', `no route ${req.method} ${req.url.split('?')[0]}`);
      }
      // A locked-out address gets 429 before its token is even compared.
      await options.guard.checkAddress(req.ip);
      if (!authorized(req, token)) {
        void reply.header('WWW-Authenticate', 'Bearer realm="FlashVerify admin"');
        await options.guard.failed(req.ip, undefined);
        throw new ApiError('unauthorized', 'Invalid or missing admin token');
      }
    });
    // Account ids are UUIDs; anything else is simply not found (no key tricks).
    admin.addHook('preHandler', async (req) => {
      const id = (req.params as { account_id?: string }).account_id;
      if (id !== undefined && !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(id)) {
        throw new ApiError('not_found', 'Account not found');
      }
    });

    admin.post('/accounts', async (req, reply) => {
      const body = parse(createBody, req.body);
      const created = await accounts.create({
        name: body.name,
        balance: body.balance ?? 0,
        currency: body.currency ?? options.defaultCurrency,
        active: body.active ?? false,
      });
      req.log.info({ account_id: created.account_id }, 'admin: account created');
      return reply.status(201).send(created);
    });
    admin.get<Params>('/accounts/:account_id', async (req) => run(() => accounts.get(req.params.account_id)));
    admin.post<Params>('/accounts/:account_id/approve', async (req) =>
      run(() => accounts.setStatus(req.params.account_id, 'active')),
    );
    admin.post<Params>('/accounts/:account_id/suspend', async (req) =>
      run(() => accounts.setStatus(req.params.account_id, 'suspended')),
    );
    admin.post<Params>('/accounts/:account_id/topup', async (req) => {
      const body = parse(topUpBody, req.body);
      return run(() => accounts.topUp(req.params.account_id, body.amount));
    });
    admin.post<Params>('/accounts/:account_id/regenerate-secret', async (req) =>
      run(() => accounts.regenerateSecret(req.params.account_id)),
    );
    admin.put<Params>('/accounts/:account_id/webhook', async (req) => {
      const body = parse(webhookBody, req.body);
      return run(() => accounts.setWebhook(req.params.account_id, body.url));
    });
    admin.put<Params>('/accounts/:account_id/rate-limit', async (req) => {
      const body = parse(rateLimitBody, req.body);
      return run(() => accounts.setRateLimit(req.params.account_id, body.requests_per_second));
    });
    // Body of PUT: the overrides themselves (fraud-rules.ts accountFraudSchema); {} clears them.
    const fraudOf = (): FraudAdmin => {
      if (!options.fraud) throw new ApiError('not_found', 'fraud controls are not wired in this process');
      return options.fraud;
    };
    const fraudBody = async (id: string) => ({
      account_id: id,
      // Fresh: another api process may have changed them within the last `accounts.fieldCacheMs`.
      overrides: (await fraudOf().overrides(id, { fresh: true })) ?? null,
      effective: await fraudOf().policy(id),
    });
    admin.put<Params>('/accounts/:account_id/fraud', async (req) => {
      const body = req.body;
      if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ApiError('invalid_request', 'the body must be a JSON object');
      const id = req.params.account_id;
      await run(() => fraudOf().setOverrides(id, Object.keys(body).length === 0 ? null : body));
      return fraudBody(id);
    });
    admin.get<Params>('/accounts/:account_id/fraud', async (req) => {
      await run(() => accounts.get(req.params.account_id));
      return fraudBody(req.params.account_id);
    });
    admin.put<{ Params: LocaleParams }>('/accounts/:account_id/sms-templates/:locale', async (req) => {
      const body = parse(smsTemplateBody, req.body);
      return run(() => accounts.setSmsTemplate(req.params.account_id, req.params.locale, body.template));
    });
    const trunksOf = (): TrunkAdmin => {
      if (!options.trunks) throw new ApiError('not_found', 'trunk administration is not wired in this process');
      return options.trunks;
    };
    admin.get('/trunks', async () => ({ trunks: await trunksOf().list() }));
    admin.post<TrunkParams>('/trunks/:trunk/disable', async (req) => {
      // No body, or {"reason": "..."}.
      const body = req.body === undefined || req.body === null ? {} : parse(disableTrunkBody, req.body);
      const state = await run(() => trunksOf().disable(req.params.trunk, body.reason));
      req.log.warn({ trunk: state.name, reason: state.reason }, 'admin: trunk disabled');
      return state;
    });
    admin.post<TrunkParams>('/trunks/:trunk/enable', async (req) => {
      const state = await run(() => trunksOf().enable(req.params.trunk));
      req.log.info({ trunk: state.name }, 'admin: trunk enabled');
      return state;
    });
  };
}

function authorized(req: FastifyRequest, token: string): boolean {
  const m = /^Bearer ([\x21-\x7E]+)$/i.exec((req.headers.authorization ?? '').trim());
  // Sealer.equal hashes both sides first: constant time whatever the lengths.
  return Sealer.equal(m?.[1] ?? '', token);
}

function parse<T>(schema: z.ZodType<T>, body: unknown): T {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new ApiError('invalid_request', 'the body must be a JSON object');
  }
  const result = schema.safeParse(body);
  if (!result.success) {
    const issues = result.error.issues.map((i) => (i.path.length ? `${i.path.join('.')}: ${i.message}` : i.message));
    throw new ApiError('invalid_request', issues.join('; '));
  }
  return result.data;
}

/** Store errors in the catalogue: an unknown account is 404, a refused value (webhook URL, amount) 400. */
async function run<T>(op: () => Promise<T>): Promise<T> {
  try {
    return await op();
  } catch (err) {
    if (err instanceof AccountNotFoundError) throw new ApiError('not_found', 'Account not found');
    if (err instanceof TrunkNotFoundError) throw new ApiError('not_found', err.message);
    if (err instanceof AppError && !(err instanceof ApiError)) throw new ApiError('invalid_request', err.message);
    throw err;
  }
}
