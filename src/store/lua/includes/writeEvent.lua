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
  createVerification-9) is after the id's time (Redis's clock): a request
  created before order sets existed, or an event long after its expiry, is not
  filed, so this never creates a set without a TTL. One ZADD. The member is
  the id padded as webhook-queue.ts orderMember pads it, so that lexical order
  is stream order.

  xaddEvent(streamKey, args, from, recordUntil): XADD of args[from..] (the
  fields of EventPublisher.streamArgs), with `nowq 1` added when the request
  has no order set at all (no `whq_until`: its account had no webhook URL
  when it was created), so that a webhook consumer need not mark such an
  event done in a set that does not exist (one command fewer per event).

  writeEvent(...): XADD of `verification.<status>` with the stream's usual
  fields (EventPublisher.streamArgs without a workflow step), `nowq` as
  above, then recordWebhookOrder. Returns the stream id.
]]
local function recordWebhookOrder(orderKey, id, recordUntil)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms or not recordUntil or tonumber(ms) >= tonumber(recordUntil) then return end
  redis.call('ZADD', orderKey, -1, string.rep('0', 15 - #ms) .. ms .. '-' .. string.rep('0', 10 - #seq) .. seq)
end

local function xaddEvent(streamKey, args, from, recordUntil)
  if recordUntil then return redis.call('XADD', streamKey, unpack(args, from)) end
  local a = { unpack(args, from) }
  a[#a + 1] = 'nowq'
  a[#a + 1] = '1'
  return redis.call('XADD', streamKey, unpack(a))
end

local function writeEvent(streamKey, maxLen, orderKey, recordUntil, status, requestId, accountId, method, timestamp, detail)
  local id = xaddEvent(streamKey, { 'MAXLEN', '~', maxLen, '*',
    'event', 'verification.' .. status, 'request_id', requestId, 'account_id', accountId,
    'method', method, 'status', status, 'timestamp', timestamp, 'detail', detail }, 1, recordUntil)
  recordWebhookOrder(orderKey, id, recordUntil)
  return id
end
