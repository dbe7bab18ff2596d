--[[
  Writing an event to the events stream and filing it in its request's
  webhook order set (Keys.webhookOrder) in the same step. Included
  (`--- @include "writeEvent"`) by every script that writes an event a webhook
  may carry.

  recordWebhookOrder(orderKey, id, recordUntil): files the event just written
  (`id`, the XADD reply) with score -1: written, not yet handled by a webhook
  consumer. The webhook processor holds a later event of the request while an
  earlier one is at -1 (or 0, queued), so an event that a consumer has read
  but not handled yet is not overtaken. Only while the record's `whq_until`
  (`recordUntil`, ms since epoch; written with the set and its TTL by
  createVerification-8) is after the id's time (Redis's clock): a request
  created before order sets existed, or an event long after its expiry, is not
  filed, so this never creates a set without a TTL. One ZADD. The member is
  the id padded as webhook-queue.ts orderMember pads it, so that lexical order
  is stream order.

  writeEvent(...): XADD of `verification.<status>` with the stream's usual
  fields (EventPublisher.streamArgs without a workflow step), then
  recordWebhookOrder. Returns the stream id.
]]
local function recordWebhookOrder(orderKey, id, recordUntil)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms or not recordUntil or tonumber(ms) >= tonumber(recordUntil) then return end
  redis.call('ZADD', orderKey, -1, string.rep('0', 15 - #ms) .. ms .. '-' .. string.rep('0', 10 - #seq) .. seq)
end

local function writeEvent(streamKey, maxLen, orderKey, recordUntil, status, requestId, accountId, method, timestamp, detail)
  local id = redis.call('XADD', streamKey, 'MAXLEN', '~', maxLen, '*',
    'event', 'verification.' .. status, 'request_id', requestId, 'account_id', accountId,
    'method', method, 'status', status, 'timestamp', timestamp, 'detail', detail)
  recordWebhookOrder(orderKey, id, recordUntil)
  return id
end
