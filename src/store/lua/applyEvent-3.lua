--[[
  Apply one delivery event from the events stream to its verification record.
  Idempotent: a status is recorded once (at_<status>), so a redelivered
  stream entry changes nothing. Terminal statuses (verified, expired, failed, canceled)
  are never left; a late `delivered` after `verified` is still recorded in the
  history but does not change the status.

  KEYS[1] verification hash
  KEYS[2] account hash (for refunds)
  KEYS[3] usage hash of the account for the day of the send being refunded (last_send_at,
          else created_at): a refunded send is taken out of it and out of the record's cost

  ARGV[1] status: delivered | failed
  ARGV[2] timestamp (ms since epoch)
  ARGV[3] outcome detail fields as a flat list encoded "k1\nv1\nk2\nv2..." (may be empty)
  ARGV[4] refund: "1" when the attempt never reached the network

  Returns the status after the event, or false when the record is gone.
]]
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
local st = ARGV[1]
if redis.call('HSETNX', KEYS[1], 'at_' .. st, ARGV[2]) == 0 then return status end

if ARGV[3] ~= '' then
  local parts = {}
  for line in string.gmatch(ARGV[3], '([^\n]*)\n?') do table.insert(parts, line) end
  for i = 1, #parts - 1, 2 do
    if parts[i] ~= '' then redis.call('HSET', KEYS[1], parts[i], parts[i + 1]) end
  end
end

local terminal = (status == 'verified' or status == 'expired' or status == 'failed' or status == 'canceled')
if not terminal then
  if st == 'delivered' and status == 'sent' then
    redis.call('HSET', KEYS[1], 'status', 'delivered')
    status = 'delivered'
  elseif st == 'failed' then
    redis.call('HSET', KEYS[1], 'status', 'failed')
    status = 'failed'
    if ARGV[4] == '1' and redis.call('HSETNX', KEYS[1], 'refunded', '1') == 1 then
      -- Only the send that never reached the network: a resend's own price (send_cost), else the request's.
      local r = redis.call('HMGET', KEYS[1], 'send_cost', 'cost', 'method')
      local cost = tonumber(r[1] or r[2] or '0')
      if cost > 0 then
        if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HINCRBY', KEYS[2], 'balance', cost) end
        redis.call('HINCRBY', KEYS[1], 'cost', -cost)
      end
      if r[3] and redis.call('EXISTS', KEYS[3]) == 1 then
        redis.call('HINCRBY', KEYS[3], r[3] .. ':count', -1)
        if cost > 0 then redis.call('HINCRBY', KEYS[3], r[3] .. ':cost', -cost) end
      end
    end
  end
end
return status
