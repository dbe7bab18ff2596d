import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Account } from '../accounts/account-store.js';
import { fromMicro } from '../accounts/money.js';
import type { Config } from '../config/schema.js';
import { Sealer } from '../crypto/sealer.js';
import type { Keys } from '../store/keys.js';
import { scripts } from '../store/scripts.js';
import { generateCode } from './codes.js';
import { ApiError } from './errors.js';
import { parseDestination } from './phone.js';
import { priceMicro } from './pricing.js';
import {
  METHODS,
  STATUSES,
  isoSeconds,
  utcDay,
  type CreatedBody,
  type Method,
  type Status,
  type StatusBody,
} from './types.js';

/** Hands an accepted verification to the delivery workers. Only the request id travels. */
export interface DeliveryQueue {
  enqueue(method: Method, requestId: string): Promise<void>;
}

export interface CreateInput {
  phone_number?: unknown;
  method?: unknown;
  code_length?: unknown;
  expiry_seconds?: unknown;
  /** Voice only: language of the announcement (en, fr, es, de); default by destination country. */
  locale?: unknown;
}

const CREATE_FIELDS = new Set(['phone_number', 'method', 'code_length', 'expiry_seconds', 'locale']);
/** Languages voice prompts exist for (assets/prompts/<lang>/). */
const VOICE_LOCALES = ['en', 'fr', 'es', 'de'] as const;
const USAGE_TTL_SECONDS = 400 * 24 * 3600;

export interface CheckResult {
  request_id: string;
  status: 'verified';
  phone_number: string;
}

/**
 * The verification domain: create (validate, price, debit, store sealed,
 * enqueue), check (constant-time MAC comparison, atomic attempt count) and
 * status. Used by the HTTP API; later by the in-process producer too.
 */
export class VerificationService {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly sealer: Sealer,
    private readonly config: Readonly<Config>,
    private readonly queue: DeliveryQueue,
    private readonly logger: Logger,
    /** Methods whose delivery workers exist on this deployment. */
    private readonly availableMethods: ReadonlySet<Method>,
  ) {}

  async create(account: Account, input: CreateInput): Promise<CreatedBody> {
    const unknown = Object.keys(input).filter((k) => !CREATE_FIELDS.has(k));
    if (unknown.length) {
      throw new ApiError('invalid_request', `unknown field(s): ${unknown.join(', ')}`);
    }
    const dest = parseDestination(input.phone_number);
    const method = parseMethod(input.method);
    if (!this.availableMethods.has(method)) {
      throw new ApiError('invalid_request', `method "${method}" is not available on this server`);
    }
    const codeLength = parseCodeLength(input.code_length, method);
    const locale = parseLocale(input.locale, method);
    const vcfg = this.config.verification;
    const expirySeconds = parseExpiry(input.expiry_seconds, vcfg.defaultExpirySeconds, vcfg.maxExpirySeconds);

    const requestId = randomUUID();
    const code = generateCode(codeLength);
    const now = Date.now();
    const expiresAt = now + expirySeconds * 1000;
    const cost = priceMicro(this.config.pricing, method, dest.country, account.currency);
    const result = (await scripts.createVerification.run(
      this.redis,
      [
        this.keys.account(account.account_id),
        this.keys.verification(requestId),
        this.keys.events(),
        this.keys.usage(account.account_id, utcDay(now)),
        this.keys.expiries(),
      ],
      [
        requestId,
        account.account_id,
        method,
        cost,
        now,
        expiresAt,
        expirySeconds + vcfg.retentionSeconds,
        this.sealer.seal(dest.e164, `phone:${requestId}`),
        this.codeMac(requestId, code),
        this.sealer.seal(code, `code:${requestId}`),
        codeLength,
        dest.country,
        this.config.events.maxLen,
        USAGE_TTL_SECONDS,
      ],
    )) as [string, string | number];
    if (result[0] !== 'ok') throw createError(String(result[1]));
    // Read by the voice worker; written before the job exists.
    if (locale !== undefined) await this.redis.hset(this.keys.verification(requestId), 'locale', locale);

    const log = this.logger.child({ request_id: requestId, account_id: account.account_id });
    try {
      await this.queue.enqueue(method, requestId);
    } catch (err) {
      // Not handed to a worker: fail it (with a refund) rather than leave it hanging.
      log.error({ err }, 'enqueue failed; verification failed and refunded');
      await scripts.applyEvent.run(
        this.redis,
        [this.keys.verification(requestId), this.keys.account(account.account_id)],
        ['failed', Date.now(), 'failure_reason\nenqueue_failed', '1'],
      );
      throw new ApiError('service_unavailable', 'could not queue the verification; it was not charged');
    }
    log.info({ method, country: dest.country, code_length: codeLength }, 'verification created');
    return {
      request_id: requestId,
      phone_number: dest.e164,
      method,
      status: 'sent',
      code_length: codeLength,
      cost: { amount: fromMicro(cost), currency: account.currency },
      expires_at: isoSeconds(expiresAt),
    };
  }

  async check(account: Account, input: { request_id?: unknown; code?: unknown }): Promise<CheckResult> {
    const unknown = Object.keys(input).filter((k) => k !== 'request_id' && k !== 'code');
    if (unknown.length) throw new ApiError('invalid_request', `unknown field(s): ${unknown.join(', ')}`);
    if (typeof input.request_id !== 'string' || input.request_id === '') {
      throw new ApiError('invalid_request', 'request_id is required and must be a string');
    }
    if (typeof input.code !== 'string' || input.code === '') {
      throw new ApiError('invalid_request', 'code is required and must be a string of digits');
    }
    const requestId = input.request_id;
    const key = this.ownedKey(requestId);
    const stored = await this.redis.hmget(key, 'account_id', 'code_mac', 'phone_enc');
    const [owner, mac, phoneEnc] = stored;
    if (!owner || owner !== account.account_id || !mac || !phoneEnc) throw notFound();

    // Constant-time comparison of MACs; a code of the wrong shape still costs an attempt.
    const matched = Sealer.equal(this.codeMac(requestId, input.code), mac);
    const now = Date.now();
    const [result, remaining] = (await scripts.recordCheck.run(
      this.redis,
      [key, this.keys.events(), this.keys.usage(account.account_id, utcDay(now))],
      [mac, matched ? '1' : '0', now, this.config.verification.maxCheckAttempts, this.config.events.maxLen, USAGE_TTL_SECONDS],
    )) as [string, number];
    const log = this.logger.child({ request_id: requestId, account_id: account.account_id });
    log.info({ result, attempts_remaining: remaining }, 'code checked');
    switch (result) {
      case 'verified':
        return { request_id: requestId, status: 'verified', phone_number: this.sealer.open(phoneEnc, `phone:${requestId}`) };
      case 'invalid_code':
        throw new ApiError('invalid_code', undefined, { attempts_remaining: remaining });
      case 'expired':
        throw new ApiError('verification_expired');
      case 'already_verified':
        throw new ApiError('verification_expired', 'This verification has already been completed');
      case 'failed':
        throw new ApiError('verification_expired', 'Delivery of this verification failed; start a new one');
      case 'not_found':
        throw notFound();
      default:
        // The code was regenerated between read and check (flash CLI cooldown): ask the user to retry.
        throw new ApiError('invalid_code', 'Incorrect code', { attempts_remaining: remaining });
    }
  }

  async status(account: Account, requestId: string): Promise<StatusBody> {
    const h = await this.redis.hgetall(this.ownedKey(requestId));
    if (!h.account_id || h.account_id !== account.account_id) throw notFound();
    const now = Date.now();
    let status = (h.status ?? 'sent') as Status;
    const expiresAt = Number(h.expires_at);
    const history = STATUSES.filter((s) => h[`at_${s}`] !== undefined)
      .map((s) => ({ status: s, ms: Number(h[`at_${s}`]) }))
      .sort((a, b) => a.ms - b.ms);
    if ((status === 'sent' || status === 'delivered') && now >= expiresAt) {
      status = 'expired';
      history.push({ status: 'expired', ms: expiresAt });
    }
    const body: StatusBody = {
      request_id: requestId,
      phone_number: this.sealer.open(h.phone_enc ?? '', `phone:${requestId}`),
      method: h.method as Method,
      status,
      cost: { amount: fromMicro(Number(h.cost ?? 0)), currency: account.currency },
      created_at: isoSeconds(Number(h.created_at)),
      verified_at: h.verified_at ? isoSeconds(Number(h.verified_at)) : null,
      expires_at: isoSeconds(expiresAt),
      status_history: history.map((e) => ({ status: e.status, at: isoSeconds(e.ms) })),
    };
    if (status === 'failed' && h.failure_reason) body.failure_reason = h.failure_reason;
    return body;
  }

  private codeMac(requestId: string, code: string): string {
    return this.sealer.mac('code', `${requestId}:${code}`);
  }

  /** Ids are UUIDs; anything else (path traversal, key injection) is simply not found. */
  private ownedKey(requestId: string): string {
    if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(requestId)) throw notFound();
    return this.keys.verification(requestId);
  }
}

function notFound(): ApiError {
  return new ApiError('not_found');
}

function createError(code: string): ApiError {
  switch (code) {
    case 'account_pending':
    case 'account_suspended':
    case 'insufficient_balance':
      return new ApiError(code);
    case 'account_missing':
      return new ApiError('unauthorized');
    default:
      return new ApiError('internal_error');
  }
}

function parseMethod(value: unknown): Method {
  if (value === undefined) return 'flash_call';
  if (typeof value !== 'string' || !(METHODS as readonly string[]).includes(value)) {
    throw new ApiError('invalid_request', `method must be one of ${METHODS.join(', ')}`);
  }
  return value as Method;
}

function parseCodeLength(value: unknown, method: Method): number {
  if (value === undefined) return 4;
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw new ApiError('invalid_request', 'code_length must be an integer');
  }
  if (method === 'flash_call' && value !== 4) {
    throw new ApiError('invalid_request', 'code_length is fixed at 4 for flash_call (the last 4 digits of the caller ID)');
  }
  if (value < 4 || value > 6) throw new ApiError('invalid_request', 'code_length must be between 4 and 6');
  return value;
}

function parseLocale(value: unknown, method: Method): string | undefined {
  if (value === undefined) return undefined;
  if (method !== 'voice') throw new ApiError('invalid_request', 'locale applies to method "voice" only');
  if (typeof value !== 'string' || !(VOICE_LOCALES as readonly string[]).includes(value)) {
    throw new ApiError('invalid_request', `locale must be one of ${VOICE_LOCALES.join(', ')}`);
  }
  return value;
}

function parseExpiry(value: unknown, def: number, max: number): number {
  if (value === undefined) return def;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > max) {
    throw new ApiError('invalid_request', `expiry_seconds must be an integer from 1 to ${max}`);
  }
  return value;
}
