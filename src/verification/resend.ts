import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Account } from '../accounts/account-store.js';
import type { IdempotencyClaim } from '../api/idempotency.js';
import { fromMicro } from '../accounts/money.js';
import type { Config } from '../config/schema.js';
import type { Sealer } from '../crypto/sealer.js';
import { CONVERSION_TTL_MS } from '../numbers/range-health.js';
import type { Keys } from '../store/keys.js';
import { scripts } from '../store/scripts.js';
import { generateCode } from './codes.js';
import { ApiError } from './errors.js';
import type { FraudControls } from './fraud-controls.js';
import type { FraudPolicy } from './fraud-rules.js';
import { priceMicro } from './pricing.js';
import { isoSeconds, jobOrdinal, utcDay, type CreatedBody, type Method } from './types.js';

/** Queues one more delivery job of a request under its own job id. */
export interface ResendQueue {
  enqueue(method: Method, requestId: string, jobId?: string): Promise<void>;
}

/**
 * The 200 body of POST /v1/verify with `resend: true`: the 201 body of the live
 * request (status "sent": this send is under way; cost: what this send cost)
 * plus the number of sends so far, this one included (at most `fraud.maxSends`).
 */
export interface ResentBody extends CreatedBody {
  sends: number;
}

const USAGE_TTL_SECONDS = 400 * 24 * 3600;

/**
 * The BullMQ job id of a request's n-th send (the first send's job id is the
 * request id itself); BullMQ refuses ':' in custom job ids, hence '-'.
 */
export function resendJobId(requestId: string, send: number): string {
  return `${requestId}-r${send}`;
}

/**
 * The send a delivery job was queued for, read back from its job id (the
 * inverse of resendJobId): 1 for the request id itself (the create, the enqueue
 * reconciler, a workflow's step 0), n for `<request_id>-r<n>`. Undefined for
 * any other id (a workflow step's `-s<n>`, a job added by hand without a job
 * id, none known): such a job is not bound to a send.
 */
export function sendOfJob(requestId: string, jobId: string | undefined): number | undefined {
  return jobId === requestId ? 1 : jobOrdinal(requestId, jobId, 'r');
}

/**
 * Sends a live verification again, on the same request: billed like a new
 * one (the request's `cost` is the sum of its sends), counted in the velocity
 * windows and in /v1/usage, at most `maxSends` sends in all. Never a
 * workflow request (resendVerification-5 refuses it).
 *
 * The code: a flash call gets a new one (the previous caller ID is in its
 * cooldown towards this number, and a new caller ID is the only way the user
 * can tell the calls apart), so the previous code stops verifying; voice and
 * SMS repeat the same code, so whichever message the user reads works.
 * Check attempts and the expiry are those of the request, not reset.
 */
export async function resendLive(
  deps: { redis: Redis; keys: Keys; sealer: Sealer; config: Readonly<Config>; queue: ResendQueue; fraud: FraudControls; logger: Logger },
  account: Account,
  live: { requestId: string; method: Method },
  dest: { e164: string; country: string },
  policy: FraudPolicy,
  clientIp: string | undefined,
  /** The request's Idempotency-Key claim: its 200 is stored by the resend script with the resend. */
  idempotency?: IdempotencyClaim,
): Promise<ResentBody> {
  const { redis, keys, sealer, config, fraud } = deps;
  const requestId = live.requestId;
  const method = live.method;
  const [sendsField, codeLength, expiresAt] = await redis.hmget(keys.verification(requestId), 'sends', 'code_length', 'expires_at');
  const sendsBefore = Number(sendsField ?? 1);
  // The request's own limit first: its message is clearer than the per-number window's (the script checks again).
  if (sendsBefore >= policy.maxSends) {
    throw resendError('max_sends', requestId, policy.maxSends, Number(expiresAt));
  }
  const admitted = await fraud.admitSend(account.account_id, policy, dest.e164, clientIp);
  const now = Date.now();
  const cost = priceMicro(config.pricing, method, dest.country, account.currency);
  const code = method === 'flash_call' ? generateCode(4) : undefined;
  // The 200, known before the resend but for its send number: that of the send this resend should be.
  const body = (sends: number): ResentBody => ({
    request_id: requestId,
    phone_number: dest.e164,
    method,
    status: 'sent',
    code_length: Number(codeLength ?? 4),
    cost: { amount: fromMicro(cost), currency: account.currency },
    expires_at: isoSeconds(Number(expiresAt)),
    sends,
  });
  const expected = sendsBefore + 1;
  let result: [string, string | number, number?];
  try {
    result = (await scripts.resendVerification.run(
      redis,
      [
        keys.account(account.account_id),
        keys.verification(requestId),
        keys.usage(account.account_id, utcDay(now)),
        keys.conversion(utcDay(now)),
        idempotency?.key ?? keys.verification(requestId),
      ],
      [
        account.account_id,
        now,
        cost,
        policy.maxSends,
        code === undefined ? '' : sealer.mac('code', `${requestId}:${code}`),
        code === undefined ? '' : sealer.seal(code, `code:${requestId}`),
        USAGE_TTL_SECONDS,
        CONVERSION_TTL_MS,
        idempotency ? idempotency.record({ status: 200, body: body(expected) }) : '',
        idempotency?.ttlSeconds ?? 0,
        expected,
      ],
    )) as [string, string | number, number?];
  } catch (err) {
    await fraud.releaseSend(admitted);
    throw err;
  }
  if (result[0] !== 'ok') {
    await fraud.releaseSend(admitted);
    throw resendError(String(result[1]), requestId, policy.maxSends, Number(expiresAt));
  }
  const sends = Number(result[1]);
  const log = deps.logger.child({ request_id: requestId, account_id: account.account_id });
  try {
    await deps.queue.enqueue(method, requestId, resendJobId(requestId, sends));
  } catch (err) {
    // Not handed to a worker: the request goes back to how it was before this resend (the previous send's fields
    // and code) and the send is given back (money and count), once: if the request expired or was canceled while the
    // add waited, that refunded the resend already ('ended'). Unless a worker has claimed it meanwhile (the add timed
    // out but landed): then it stands.
    const undone = await scripts.undoResend.run(
      redis,
      [keys.account(account.account_id), keys.verification(requestId), keys.usage(account.account_id, utcDay(now)), keys.conversion(utcDay(now))],
      [sends, cost, method],
    );
    if (undone !== 'claimed') {
      log.error({ err, undone }, 'enqueue of a resend failed; the resend was taken back and refunded');
      await fraud.releaseSend(admitted);
      throw new ApiError('service_unavailable', 'could not queue the resend; it was not charged');
    }
    log.warn({ err }, 'enqueue of a resend reported a failure, but its job was queued and claimed; the resend stands');
  }
  // Counted in the conversion `sent` by resendVerification-5; this is the Prometheus counter.
  fraud.trackSent(dest.country, method);
  log.info({ method, sends }, 'verification resent');
  return body(sends);
}

/** `expiresAtMs`: the request's expiry, when a new one can be started (max_sends: Retry-After). */
function resendError(code: string, requestId: string, maxSends: number, expiresAtMs: number): ApiError {
  switch (code) {
    case 'account_pending':
    case 'account_suspended':
    case 'insufficient_balance':
      return new ApiError(code);
    case 'account_missing':
      return new ApiError('unauthorized');
    case 'max_sends': {
      const err = new ApiError(
        'rate_limited',
        `This verification was already sent ${maxSends} times, the most allowed; wait for it to expire, then start a new one`,
        { request_id: requestId, limit: 'max-sends' },
      );
      err.headers['Retry-After'] = Math.max(1, Math.ceil(((Number.isFinite(expiresAtMs) ? expiresAtMs : 0) - Date.now()) / 1000));
      return err;
    }
    case 'queued':
      return new ApiError('verification_pending', 'The previous send of this verification is still queued; it will go out shortly', {
        request_id: requestId,
      });
    case 'in_progress':
      return new ApiError('verification_pending', 'The previous send of this verification is still in progress; resend once it has finished', {
        request_id: requestId,
      });
    case 'workflow':
      return new ApiError(
        'verification_pending',
        'This verification is a workflow: it starts its next step by itself, so it cannot be resent',
        { request_id: requestId },
      );
    case 'not_found':
    case 'not_live':
      // Finished (verified, failed, expired) between our read and the resend: the caller may start a new one.
      return new ApiError('verification_pending', 'The verification finished meanwhile; start a new one', { request_id: requestId });
    default:
      return new ApiError('internal_error');
  }
}
