import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Sealer } from '../crypto/sealer.js';
import type { EventPublisher } from '../events/event-publisher.js';
import type { Keys } from '../store/keys.js';
import type { Method } from '../verification/types.js';

/** A verification this worker may now deliver, with its sealed fields opened. */
export interface DeliveryClaim {
  key: string;
  /** The event fields every event of this attempt carries. */
  base: { request_id: string; account_id: string; method: Method };
  log: Logger;
  /** Destination, E.164. */
  to: string;
  /** The code in clear: never log it, never put it in events. */
  code: string;
  country: string;
  /** Values of the extra record fields asked for. */
  extra: Record<string, string | null>;
}

export interface ClaimDeps {
  redis: Redis;
  keys: Keys;
  sealer: Sealer;
  events: EventPublisher;
  logger: Logger;
}

/**
 * The common first step of every delivery job: load the record, drop jobs that
 * no longer apply (gone, other method, past `sent`), fail expired ones with a
 * refund, and record the dial before anything leaves, so that a job re-run
 * after a worker crash never calls or texts the destination twice for one
 * attempt. Returns undefined when the job has nothing (more) to do.
 */
export async function claimDelivery(
  deps: ClaimDeps,
  requestId: string,
  method: Method,
  extraFields: readonly string[] = [],
): Promise<DeliveryClaim | undefined> {
  const { redis, keys, sealer, events } = deps;
  const key = keys.verification(requestId);
  const [status, accountId, phoneEnc, codeEnc, country, expiresAt, storedMethod, ...extraValues] = await redis.hmget(
    key,
    'status',
    'account_id',
    'phone_enc',
    'code_enc',
    'country',
    'expires_at',
    'method',
    ...extraFields,
  );
  const log = deps.logger.child({ request_id: requestId });
  if (!status || !accountId || !phoneEnc || !codeEnc) {
    log.warn({ method }, 'delivery job for a verification that no longer exists; dropped');
    return undefined;
  }
  if (storedMethod !== method) {
    log.error({ method, stored_method: storedMethod }, 'delivery job for a verification of another method; dropped');
    return undefined;
  }
  if (status !== 'sent') {
    log.info({ status }, 'verification already past sent; not delivering again');
    return undefined;
  }
  const base = { request_id: requestId, account_id: accountId, method };
  if (Date.now() >= Number(expiresAt)) {
    await events.publish({ ...base, status: 'failed', detail: { reason: 'expired_before_delivery', refund: true } });
    return undefined;
  }
  if ((await redis.hsetnx(key, 'dial_started', String(Date.now()))) === 0) {
    log.warn('a previous worker already started this delivery (crash?); not delivering again');
    await events.publish({ ...base, status: 'failed', detail: { reason: 'interrupted' } });
    return undefined;
  }
  const extra: Record<string, string | null> = {};
  extraFields.forEach((f, i) => (extra[f] = extraValues[i] ?? null));
  return {
    key,
    base,
    log,
    to: sealer.open(phoneEnc, `phone:${requestId}`),
    code: sealer.open(codeEnc, `code:${requestId}`),
    country: country ?? 'ZZ',
    extra,
  };
}
