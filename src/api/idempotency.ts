import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Sealer } from '../crypto/sealer.js';
import type { Keys } from '../store/keys.js';
import { adoptPreviousNames } from '../store/scripts.js';
import { ApiError } from '../verification/errors.js';

export interface StoredResponse {
  status: number;
  body: unknown;
}

interface IdemRecord {
  /**
   * pending: claimed, running. created: the script that made the request (or the resend) stored its answer with it
   * (IdempotencyClaim), and the api has not answered yet: a duplicate waits as for `pending` (the api may still answer otherwise: 503 when the
   * job could not be queued), and replays it once `at` is PENDING_TTL_SECONDS old (that api died). done: answered.
   */
  state: 'pending' | 'created' | 'done';
  /** `created`: when (ms since epoch). */
  at?: number;
  /**
   * Keyed MAC of the request body as sent (which holds a phone number): a key reused for another request is refused.
   * (As sent: what a process of the version before `fpc` compares, during a rolling upgrade.)
   */
  fp: string;
  /** Keyed MAC of the body with its members in sorted order: the same request, its members written in another order. */
  fpc?: string;
  /** The response ({status, body}: it holds the phone number) as JSON, sealed (AES-256-GCM) to this record's name. */
  sealed?: string;
  /** Written before responses were sealed (a record lives `ttlSeconds`): read, never written. */
  status?: number;
  body?: unknown;
}

/**
 * What a create (createVerification-9) or a resend (resendVerification-5) stores with the request or the resend it
 * makes, in the same step, when the request has an `Idempotency-Key`: the record that replays its 201 (200). An api
 * process that dies between that step and its own store then leaves a retry that record, never a second create or send.
 */
export interface IdempotencyClaim {
  /** The record's Redis key. */
  key: string;
  ttlSeconds: number;
  /** The record (JSON, its response sealed, state `created`) that replays `response` should this api process die. */
  record(response: StoredResponse): string;
}

export interface IdempotencyOptions {
  /** How long the first response is replayed (the docs' peers use 24 h). */
  ttlSeconds: number;
  /** How long a duplicate waits for the first request with its key to finish. */
  waitMs: number;
}

/** A claim outlives no crashed request by more than this; then a retry may run it anew. */
const PENDING_TTL_SECONDS = 60;
const POLL_MS = 25;
/** A response whose store failed (Redis away) is stored again this often while its claim holds. */
const STORE_RETRY_MS = 250;

/** `Idempotency-Key`: 1 to 255 printable ASCII characters. */
export function parseIdempotencyKey(header: string | string[] | undefined): string | undefined {
  if (header === undefined) return undefined;
  if (typeof header !== 'string' || !/^[\x20-\x7e]{1,255}$/.test(header)) {
    throw new ApiError('invalid_request', 'Idempotency-Key must be 1 to 255 printable ASCII characters');
  }
  return header;
}

/**
 * Replays the first response to an `Idempotency-Key` (per account) for
 * `ttlSeconds`: the first request claims the key (SET NX), runs, and stores
 * its status and body; a repeat gets that response without running again
 * (no second verification, no second debit). A duplicate that arrives while
 * the first is still running waits for its response (up to `waitMs`, then
 * 503 to retry). A 400 is stored like a success (the same request would fail
 * the same way); a refusal of the moment (402 balance, 403 account, 409 a live
 * verification, 429 a limit) and a 5xx release the key, so a retry runs once
 * the moment has passed, and keep their headers (Retry-After). A response made
 * is answered even when storing it fails (Redis went away just then): the
 * store is tried again meanwhile, so a retry is replayed, not run twice.
 */
export class Idempotency {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly sealer: Sealer,
    private readonly options: IdempotencyOptions,
  ) {}

  async run(
    accountId: string,
    key: string,
    request: unknown,
    exec: (claim: IdempotencyClaim) => Promise<StoredResponse>,
  ): Promise<StoredResponse & { replayed: boolean }> {
    // The key and the body are the client's: either may hold a phone number, so neither goes to Redis in clear nor
    // as a plain hash (a hash of a phone number is reversed by trying every number): keyed MACs, as for every key
    // name made of a number. A record named by the plain SHA-256 of the key (before) is taken over.
    const redisKey = this.keys.idempotency(accountId, this.sealer.mac('idempotency-key', key));
    await adoptPreviousNames(this.redis, [this.keys.idempotency(accountId, createHash('sha256').update(key).digest('hex'))], redisKey);
    // The body as sent, and with its members in sorted order (the same request, its members in another order).
    const asSent = JSON.stringify(request ?? null);
    const fp = this.sealer.mac('idempotency-request', asSent);
    const fpc = this.sealer.mac('idempotency-request', canonicalJson(request ?? null));
    // A record of the version before the keyed MAC: the SHA-256 of the body as sent.
    const legacyFp = createHash('sha256').update(asSent).digest('hex');
    const deadline = Date.now() + this.options.waitMs;
    for (;;) {
      const pending: IdemRecord = { state: 'pending', fp, fpc };
      if ((await this.redis.set(redisKey, JSON.stringify(pending), 'EX', PENDING_TTL_SECONDS, 'NX')) === 'OK') {
        return { ...(await this.execute(redisKey, fp, fpc, exec)), replayed: false };
      }
      const raw = await this.redis.get(redisKey);
      if (raw !== null) {
        const stored = JSON.parse(raw) as IdemRecord;
        if (stored.fp !== fp && stored.fp !== legacyFp && (stored.fpc === undefined || stored.fpc !== fpc)) {
          throw new ApiError('invalid_request', 'this Idempotency-Key was already used with a different request body');
        }
        if (stored.state === 'done' || (stored.state === 'created' && Date.now() - (stored.at ?? 0) >= PENDING_TTL_SECONDS * 1000)) {
          if (stored.sealed === undefined) return { status: stored.status ?? 200, body: stored.body, replayed: true };
          const response = JSON.parse(this.sealer.open(stored.sealed, redisKey)) as StoredResponse;
          return { ...response, replayed: true };
        }
        if (Date.now() >= deadline) {
          throw new ApiError('service_unavailable', 'a request with this Idempotency-Key is still in progress; retry shortly');
        }
        await new Promise((r) => setTimeout(r, POLL_MS));
      }
      // raw === null: the first request released the key (5xx) or its claim lapsed; claim it now.
    }
  }

  private async execute(redisKey: string, fp: string, fpc: string, exec: (claim: IdempotencyClaim) => Promise<StoredResponse>): Promise<StoredResponse> {
    const record = (response: StoredResponse, state: 'created' | 'done'): string => {
      const sealed = this.sealer.seal(JSON.stringify({ status: response.status, body: response.body }), redisKey);
      const r: IdemRecord = state === 'created' ? { state, at: Date.now(), fp, fpc, sealed } : { state, fp, fpc, sealed };
      return JSON.stringify(r);
    };
    let response: StoredResponse;
    try {
      response = await exec({ key: redisKey, ttlSeconds: this.options.ttlSeconds, record: (r) => record(r, 'created') });
    } catch (err) {
      if (err instanceof ApiError && err.status === 400) {
        response = { status: err.status, body: err.toBody() };
      } else {
        await this.redis.del(redisKey).catch(() => undefined);
        throw err;
      }
    }
    const done = record(response, 'done');
    const store = (): Promise<unknown> => this.redis.set(redisKey, done, 'EX', this.options.ttlSeconds);
    // The verification exists (created, charged, queued): its answer goes back whatever happens to the store. A create
    // or a resend stored its answer with it already (IdempotencyClaim); any other answer: until the store lands, a
    // retry waits on the claim (503 "in progress"), never runs the request again.
    await store().catch(() => this.storeLater(store));
    return response;
  }

  /**
   * Tries the store again every STORE_RETRY_MS, in the background, for as long as a claim lives (PENDING_TTL_SECONDS).
   * An api process that dies first leaves the claim to lapse: a create's 201 or a resend's 200 is in Redis already
   * (stored with it, `created`: replayed once 60 s old).
   */
  private storeLater(store: () => Promise<unknown>): void {
    const until = Date.now() + PENDING_TTL_SECONDS * 1000;
    void (async () => {
      while (Date.now() < until) {
        await new Promise((r) => setTimeout(r, STORE_RETRY_MS));
        if (await store().then(() => true, () => false)) return;
      }
    })();
  }
}

/** JSON with every object's members in sorted order: one text for one request, however its members were ordered. */
function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v !== null && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}
