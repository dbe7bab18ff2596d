import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics/metrics.js';
import type { Keys } from '../store/keys.js';
import { scripts } from '../store/scripts.js';
import { chargeDay, chargeFields, utcDay } from '../verification/types.js';
import { GroupConsumer, type GroupConsumerOptions, type StreamEntry } from './group-consumer.js';

export type { StreamEntry } from './group-consumer.js';

/**
 * Reads the events stream in a consumer group and applies each event to its
 * verification record (status, history, failure reason, refund). An entry is
 * acknowledged only after it was applied; entries left pending by a consumer
 * that died are reclaimed (XAUTOCLAIM) after `claimIdleMs`.
 */
export class StatusConsumer extends GroupConsumer {
  constructor(
    redis: Redis,
    keys: Keys,
    group: string,
    consumer: string,
    logger: Logger,
    private readonly metrics: Metrics,
    options: GroupConsumerOptions = {},
  ) {
    super(redis, keys, group, consumer, logger, options);
  }

  protected async handle({ id, fields }: StreamEntry): Promise<void> {
    const status = fields.status;
    if (status === 'verified' && fields.request_id) {
      // Per-range conversion: the range of the caller ID whose code verified: `cli_range`, written when
      // its call was placed (the latest send's, after a resend: only its code verifies), else the range
      // copied onto the record from the `delivered` event (a workflow's flash step), which precedes
      // `verified` in the stream. Each event is handled by one consumer of the group, so the counters
      // summed over processes count each verification once (a reclaim after a crash may count one twice).
      const [cliRange, delivered] = await this.redis.hmget(this.keys.verification(fields.request_id), 'cli_range', 'range');
      const range = cliRange ?? delivered;
      if (range) this.metrics.rangeVerified(range);
      return;
    }
    if ((status !== 'delivered' && status !== 'failed') || !fields.request_id) return;
    let detail: Record<string, unknown> = {};
    try {
      detail = JSON.parse(fields.detail ?? '{}') as Record<string, unknown>;
    } catch {
      this.logger.warn({ event_id: id }, 'event with malformed detail');
    }
    const patch: string[] = [];
    for (const k of ['reason', 'sip_status', 'outcome', 'call_id', 'trunk', 'range']) {
      const v = detail[k];
      if (v !== undefined) patch.push(k === 'reason' ? 'failure_reason' : k, String(v).replace(/\n/g, ' '));
    }
    // An event of a workflow step (field `step`): applyStepEvent-4 keeps a failed step with steps left from failing the request.
    const stepped = fields.step !== undefined;
    const key = this.keys.verification(fields.request_id);
    const refund = detail.refund === true;
    // A refunded attempt leaves the usage of the day it was charged (read only then: refunds are rare).
    let day = utcDay(Date.now());
    if (refund) {
      const names = chargeFields(fields.step);
      const read = await this.redis.hmget(key, ...names);
      day = chargeDay(Object.fromEntries(names.map((n, i) => [n, read[i] ?? undefined])), fields.step);
    }
    await (stepped ? scripts.applyStepEvent : scripts.applyEvent).run(
      this.redis,
      [
        key,
        this.keys.account(fields.account_id ?? ''),
        this.keys.usage(fields.account_id ?? '', day),
        // A refunded send leaves the day's per-country conversion `sent` too (it never reached the network).
        this.keys.conversion(day),
      ],
      // The entry's id: the stream order of a `failed` that ends the request (webhook-processor.ts contradictsFinal).
      [status, fields.timestamp ?? String(Date.now()), patch.join('\n'), refund ? '1' : '0', stepped ? fields.step! : '1', id],
    );
  }
}
