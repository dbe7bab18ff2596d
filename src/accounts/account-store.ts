import { randomBytes, randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { Sealer } from '../crypto/sealer.js';
import { AppError } from '../errors/app-error.js';
import { assertWebhookTarget, checkWebhookUrlLength, WebhookLookupTimeoutError, WebhookTargetError, type ResolveAll } from '../events/webhook-target.js';
import { resetWebhookBreaker } from '../events/webhook-breaker.js';
import { validateTemplate } from '../sms/text.js';
import type { Keys } from '../store/keys.js';
import { forgetAccountField, type AccountFieldCache } from './account-field-cache.js';
import { authCache } from './auth-cache.js';
import { fromMicro, toMicro, type Currency } from './money.js';

/**
 * The largest balance an account may hold, in its currency: its micro-units (money.ts) stay integers that a JS number
 * holds exactly (2^53 is about 9e15 micro-units) and that HINCRBY takes; a larger one was stored as "1e+21" and broke
 * every later top-up.
 */
export const MAX_BALANCE = 1_000_000_000;

/** Upper bound of a per-account rate limit (requests per second), far above what one Redis counter key should take. */
export const MAX_RATE_LIMIT = 100_000;

export type AccountStatus = 'pending' | 'active' | 'suspended';

export interface Account {
  account_id: string;
  name: string;
  status: AccountStatus;
  currency: Currency;
  balance: number;
  api_key: string;
  webhook_url: string | null;
  rate_limit: number | null;
  /** SMS templates of this account by locale (override `sms.templates`). */
  sms_templates: Record<string, string>;
  created_at: string;
}

export interface CreatedAccount extends Account {
  /** Shown once, at creation or regeneration; stored only sealed and as a MAC. */
  api_secret: string;
}

export class AccountNotFoundError extends AppError {
  constructor(id: string) {
    super('account_not_found', `no account ${id}`);
  }
}

/** Accounts in Redis: the API secret is kept sealed (webhooks are signed with it) plus a MAC for login. */
export class AccountStore {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly sealer: Sealer,
    private readonly options: {
      allowPrivateWebhooks?: boolean;
      /** Reuse a successful `authenticate` this long (auth-cache.ts); 0 or unset: every call reads Redis. */
      authCacheMs?: number;
      /** Resolver of a webhook URL's host when it is set (default: the system's); tests inject one. */
      resolveAll?: ResolveAll;
      /** How long a webhook URL's host may take to resolve when it is set (default 10 s). */
      webhookLookupTimeoutMs?: number;
    } = {},
  ) {}

  async create(input: { name: string; balance?: number; currency: Currency; active?: boolean }): Promise<CreatedAccount> {
    const balance = input.balance ?? 0;
    if (!(balance >= 0 && balance <= MAX_BALANCE)) throw new AppError('invalid_amount', `the balance must be a number from 0 to ${MAX_BALANCE}`);
    const id = randomUUID();
    const apiKey = randomBytes(16).toString('hex');
    const secret = randomBytes(32).toString('hex');
    const now = new Date().toISOString();
    const status: AccountStatus = input.active ? 'active' : 'pending';
    await this.redis
      .multi()
      .hset(this.keys.account(id), {
        account_id: id,
        name: input.name,
        status,
        currency: input.currency,
        balance: String(toMicro(balance)),
        api_key: apiKey,
        secret_mac: this.secretMac(apiKey, secret),
        secret_enc: this.sealer.seal(secret, `secret:${id}`),
        created_at: now,
      })
      .set(this.keys.accountByKey(apiKey), id)
      .sadd(this.keys.accounts(), id)
      .exec();
    return { ...(await this.get(id)), api_secret: secret };
  }

  async get(id: string): Promise<Account> {
    const h = await this.redis.hgetall(this.keys.account(id));
    if (!h.account_id) throw new AccountNotFoundError(id);
    return toAccount(h);
  }

  /**
   * The account of a Basic-auth pair that succeeded within `authCacheMs` in this process (auth-cache.ts), without
   * Redis; undefined when it did not (or it is not cached): `authenticate` then tells.
   */
  authenticatedRecently(apiKey: string, secret: string): (Account & { secretOk: true }) | undefined {
    const slot = this.cacheSlot(apiKey, secret);
    const cached = slot !== undefined ? authCache.get(slot) : undefined;
    return cached ? { ...cached, secretOk: true } : undefined;
  }

  /** The pair's entry in the auth cache, when the cache is on and the key well formed. */
  private cacheSlot(apiKey: string, secret: string): string | undefined {
    if ((this.options.authCacheMs ?? 0) <= 0 || !/^[0-9a-f]{32}$/.test(apiKey)) return undefined;
    return authCache.slot(this.keys.account(''), apiKey, secret);
  }

  /** The account a Basic-auth pair belongs to, or null; the secret is compared in constant time. */
  async authenticate(apiKey: string, secret: string): Promise<(Account & { secretOk: true }) | null> {
    if (!/^[0-9a-f]{32}$/.test(apiKey)) return null;
    const recent = this.authenticatedRecently(apiKey, secret);
    if (recent) return recent;
    const account = await this.authenticateInRedis(apiKey, secret);
    if (!account) {
      authCache.forgetKey(apiKey);
      return null;
    }
    const slot = this.cacheSlot(apiKey, secret);
    if (slot !== undefined) authCache.set(slot, account, this.options.authCacheMs ?? 0);
    return { ...account, secretOk: true };
  }

  private async authenticateInRedis(apiKey: string, secret: string): Promise<Account | null> {
    const id = await this.redis.get(this.keys.accountByKey(apiKey));
    // Compute a MAC even when the key is unknown so both paths cost the same.
    const given = this.secretMac(apiKey, secret);
    if (!id) {
      Sealer.equal(given, '0'.repeat(64));
      return null;
    }
    const h = await this.redis.hgetall(this.keys.account(id));
    const match = this.sealer.matches('api-secret', `${apiKey}:${secret}`, h.secret_mac ?? '');
    if (!h.account_id || !match) return null;
    if (match === 'previous' || (h.secret_enc !== undefined && !this.sealer.isCurrent(h.secret_enc))) {
      // First use since a master key rotation: MAC and seal the secret under the current key.
      await this.redis.hset(this.keys.account(id), { secret_mac: given, secret_enc: this.sealer.seal(secret, `secret:${id}`) });
    }
    return toAccount(h);
  }

  async setStatus(id: string, status: AccountStatus): Promise<Account> {
    await this.mustExist(id);
    await this.redis.hset(this.keys.account(id), 'status', status);
    authCache.forgetAccount(id);
    return this.get(id);
  }

  async topUp(id: string, amount: number): Promise<Account> {
    if (!(amount > 0 && amount <= MAX_BALANCE)) throw new AppError('invalid_amount', `top-up amount must be a positive number up to ${MAX_BALANCE}`);
    await this.mustExist(id);
    const after = await this.redis.hincrby(this.keys.account(id), 'balance', toMicro(amount));
    if (after > toMicro(MAX_BALANCE)) {
      await this.redis.hincrby(this.keys.account(id), 'balance', -toMicro(amount));
      throw new AppError('invalid_amount', `the balance would be over ${MAX_BALANCE}`);
    }
    authCache.forgetAccount(id);
    return this.get(id);
  }

  /** New secret, same key (as the FlashVerify dashboard does). */
  async regenerateSecret(id: string): Promise<CreatedAccount> {
    const account = await this.get(id);
    const secret = randomBytes(32).toString('hex');
    await this.redis.hset(this.keys.account(id), {
      secret_mac: this.secretMac(account.api_key, secret),
      secret_enc: this.sealer.seal(secret, `secret:${id}`),
    });
    authCache.forgetAccount(id);
    return { ...account, api_secret: secret };
  }

  async setWebhook(id: string, url: string | null): Promise<Account> {
    await this.mustExist(id);
    if (url === null) await this.redis.hdel(this.keys.account(id), 'webhook_url');
    else {
      // SSRF: refuse hosts that resolve inside our network (checked again at every delivery). A resolver that does
      // not answer gets a clear refusal in bounded time, not a request (admin API, CLI) hanging until getaddrinfo
      // gives up.
      const timeoutMs = this.options.webhookLookupTimeoutMs ?? 10_000;
      checkWebhookUrlLength(url);
      const parsed = await assertWebhookTarget(url, this.options.allowPrivateWebhooks ?? false, this.options.resolveAll, AbortSignal.timeout(timeoutMs)).catch(
        (err: unknown) => {
          if (err instanceof WebhookLookupTimeoutError) throw new WebhookTargetError(`no DNS answer for the webhook host within ${timeoutMs} ms; try again`);
          throw err;
        },
      );
      checkWebhookUrlLength(parsed.toString());
      await this.redis.hset(this.keys.account(id), 'webhook_url', parsed.toString());
    }
    authCache.forgetAccount(id);
    // A new (or the same, set again) URL gets a fresh start: its breaker closes and its failures are forgotten.
    await resetWebhookBreaker(this.redis, this.keys, id);
    // This process's webhook consumer sees the new URL at once; other processes within `accounts.fieldCacheMs`.
    forgetAccountField(this.keys, id, 'webhook_url');
    return this.get(id);
  }

  /**
   * Requests per second allowed for this account's API key (HTTP and in-process
   * producers alike); null returns it to `api.defaultRateLimitPerSecond`.
   */
  async setRateLimit(id: string, requestsPerSecond: number | null): Promise<Account> {
    if (requestsPerSecond !== null && !(Number.isInteger(requestsPerSecond) && requestsPerSecond > 0 && requestsPerSecond <= MAX_RATE_LIMIT)) {
      throw new AppError('invalid_rate_limit', `the rate limit must be a whole number of requests per second from 1 to ${MAX_RATE_LIMIT}`);
    }
    await this.mustExist(id);
    if (requestsPerSecond === null) await this.redis.hdel(this.keys.account(id), 'rate_limit');
    else await this.redis.hset(this.keys.account(id), 'rate_limit', String(requestsPerSecond));
    authCache.forgetAccount(id);
    return this.get(id);
  }

  /**
   * The account's SMS text for a language (`{code}` is replaced by the code);
   * null removes it, back to `sms.templates`. Refused when a 6-digit code
   * would not fit one SMS part.
   */
  async setSmsTemplate(id: string, locale: string, template: string | null): Promise<Account> {
    if (!/^[a-z]{2,3}(-[A-Z]{2})?$/.test(locale)) throw new AppError('invalid_locale', 'the locale must be a language tag such as "en" or "pt-BR"');
    await this.mustExist(id);
    if (template === null) await this.redis.hdel(this.keys.account(id), `sms_tpl:${locale}`);
    else {
      validateTemplate(template);
      await this.redis.hset(this.keys.account(id), `sms_tpl:${locale}`, template);
    }
    authCache.forgetAccount(id);
    // This process's SMS worker sees the new text at once; other processes within `accounts.fieldCacheMs`.
    forgetAccountField(this.keys, id, `sms_tpl:${locale}`);
    return this.get(id);
  }

  /** The account's own SMS template for a locale, or null (read through `fields` when given: the SMS worker). */
  async smsTemplate(id: string, locale: string, fields?: AccountFieldCache): Promise<string | null> {
    return fields ? fields.get(id, `sms_tpl:${locale}`) : this.redis.hget(this.keys.account(id), `sms_tpl:${locale}`);
  }

  private async mustExist(id: string): Promise<void> {
    if (!(await this.redis.exists(this.keys.account(id)))) throw new AccountNotFoundError(id);
  }

  private secretMac(apiKey: string, secret: string): string {
    return this.sealer.mac('api-secret', `${apiKey}:${secret}`);
  }
}

function toAccount(h: Record<string, string>): Account {
  return {
    account_id: h.account_id ?? '',
    name: h.name ?? '',
    status: (h.status as AccountStatus) ?? 'pending',
    currency: (h.currency as Currency) ?? 'GBP',
    balance: fromMicro(Number(h.balance ?? 0)),
    api_key: h.api_key ?? '',
    webhook_url: h.webhook_url ?? null,
    rate_limit: h.rate_limit ? Number(h.rate_limit) : null,
    sms_templates: Object.fromEntries(
      Object.entries(h)
        .filter(([k]) => k.startsWith('sms_tpl:'))
        .map(([k, v]) => [k.slice('sms_tpl:'.length), v]),
    ),
    created_at: h.created_at ?? '',
  };
}
