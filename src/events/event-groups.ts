import type { Redis } from 'ioredis';
import type { Config } from '../config/schema.js';
import type { Keys } from '../store/keys.js';
import { ensureGroup } from './group-consumer.js';
import { WEBHOOK_GROUP_START } from './webhook-consumer.js';

/**
 * Creates the events stream's consumer groups that do not exist yet, each at
 * the position its consumer would create it at (status and workflow groups at
 * the start of the stream, webhooks at new events). Called at boot by every
 * process that writes events (every engine role, the in-process producer)
 * before it writes any: a webhooks group created later, when its consumer
 * first starts, would never see the events written before it.
 */
export async function ensureEventGroups(redis: Redis, keys: Keys, events: Readonly<Config['events']>): Promise<void> {
  await ensureGroup(redis, keys, events.consumerGroup, '0');
  await ensureGroup(redis, keys, events.webhookGroup, WEBHOOK_GROUP_START);
  if (events.workflowGroup) await ensureGroup(redis, keys, events.workflowGroup, '0');
}

/**
 * The events stream's consumer groups as XINFO GROUPS reports them: entries each has read but not acknowledged
 * (`pending`) and, on Redis 7, entries not read yet (`lag`; absent when Redis cannot tell, e.g. after a trim of
 * entries the group never read). For the metrics (`flashverify_events_group_*`). A group that has read up to the
 * stream's last entry has a lag of 0 whatever Redis estimates: its count of entries read can be left behind (a
 * restart, a group set by id), and the estimate then stays high while the group is caught up.
 */
export async function eventGroupStates(redis: Redis, keys: Keys): Promise<{ name: string; pending: number; lag?: number }[]> {
  const [groups, stream] = (await Promise.all([redis.call('XINFO', 'GROUPS', keys.events()), redis.call('XINFO', 'STREAM', keys.events())])) as [
    unknown[][],
    unknown[],
  ];
  const lastId = fields(stream).get('last-generated-id');
  return groups.map((g) => {
    const f = fields(g);
    const lag = f.get('last-delivered-id') === lastId ? 0 : f.get('lag');
    return { name: String(f.get('name')), pending: Number(f.get('pending') ?? 0), ...(typeof lag === 'number' ? { lag } : {}) };
  });
}

/** An XINFO reply's name/value pairs. */
function fields(reply: unknown[]): Map<string, unknown> {
  const f = new Map<string, unknown>();
  for (let i = 0; i + 1 < reply.length; i += 2) f.set(String(reply[i]), reply[i + 1]);
  return f;
}
