--[[
  Marks one event of a request's webhook order set done (delivered, dropped or
  finally failed): its score becomes 1 instead of the member leaving the set.
  The consumer adds members with ZADD NX, so a redelivered stream entry whose
  webhook is already done cannot put it back among the pending ones (score 0),
  where it would hold every later event of the request behind a job that will
  never run again. Once nothing is pending, the set lives only `ARGV[2]`
  seconds more: long enough to cover a redelivery (claimIdleMs, a failed XACK).

  KEYS[1] order set (Keys.webhookOrder)

  ARGV[1] member (orderMember of the stream id)
  ARGV[2] seconds the set is kept once no event of the request is pending

  Returns 1 when the member was pending, 0 otherwise.
]]
local changed = redis.call('ZADD', KEYS[1], 'XX', 'CH', 1, ARGV[1])
if redis.call('ZCOUNT', KEYS[1], 0, 0) == 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return changed
