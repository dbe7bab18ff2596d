--[[
  Whether a request's webhook event may go out now: no earlier event of the
  request is still pending, neither in the order set (queued, not delivered)
  nor in the webhooks consumer group's pending entries (read from the stream
  but not yet filed in the order set: a handler that threw, a consumer that
  died or is slower than another). The order set alone only knows events a
  consumer has handled; the stream's order is the events' order, and every
  entry before this one was delivered to some consumer of the group first
  (XREADGROUP ">" reads in stream order), so it is either acknowledged
  (handled) or in the group's pending list.

  KEYS[1] order set (Keys.webhookOrder): score 0 pending, 1 done
  KEYS[2] events stream

  ARGV[1] webhooks consumer group
  ARGV[2] this event's order member (orderMember of its stream id)
  ARGV[3] this event's stream id
  ARGV[4] request id
  ARGV[5] how many of the group's pending entries before this one to look at
  ARGV[6..] the event names that get webhooks

  Returns 1 when it is this event's turn, 0 when it must wait.
]]
local head = redis.call('ZRANGEBYSCORE', KEYS[1], 0, 0, 'LIMIT', 0, 1)[1]
if head and head < ARGV[2] then return 0 end

local ok, pending = pcall(redis.call, 'XPENDING', KEYS[2], ARGV[1], '-', '(' .. ARGV[3], tonumber(ARGV[5]))
-- No group (lost with the stream, being created again): nothing is pending.
if not ok then return 1 end

local webhookEvents = {}
for i = 6, #ARGV do webhookEvents[ARGV[i]] = true end

local function member(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return string.rep('0', 15 - #ms) .. ms .. '-' .. string.rep('0', 10 - #seq) .. seq
end

for _, p in ipairs(pending) do
  local entry = redis.call('XRANGE', KEYS[2], p[1], p[1])[1]
  if entry then
    local f = {}
    for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
    -- Same skips as the webhook consumer: a failed workflow step with steps left gets no webhook.
    local skipped = f.event == 'verification.failed' and f.step and tonumber(f.step) < tonumber(f.steps) - 1
    if f.request_id == ARGV[4] and webhookEvents[f.event] and not skipped then
      -- Handled and done (its batch not acknowledged yet) does not hold this one; anything else does.
      if redis.call('ZSCORE', KEYS[1], member(p[1])) ~= '1' then return 0 end
    end
  end
end
return 1
