--[[
  Apply one delivery event from the events stream to its verification record.
  Idempotent: a status is recorded once (at_<status>), so a redelivered
  stream entry changes nothing. Terminal statuses (verified, expired, failed, canceled)
  are never left, and an event arriving after one records nothing (no at_<status>,
  no outcome fields: the history stays [sent, expired], not [sent, expired, failed]),
  except a late `delivered` after `verified` (the stream lagged the check: it was
  delivered). A refunded failure (an attempt that never reached the network) is
  refunded whatever the status meanwhile, once (HSETNX `refunded`): a call timing
  out (Timer B) after the request expired or was canceled is not billed.

  KEYS[1] verification hash
  KEYS[2] account hash (for refunds)
  KEYS[3] usage hash of the account for the day of the send being refunded (last_send_at,
          else created_at): a refunded send is taken out of it and out of the record's cost
  KEYS[4] conversion hash of that day (countSent.lua): a refunded send never reached
          the network, so it leaves `country:<cc>:<method>:sent` too (when ARGV[5] is "1")

  ARGV[1] status: delivered | failed
  ARGV[2] timestamp (ms since epoch)
  ARGV[3] outcome detail fields as a flat list encoded "k1\nv1\nk2\nv2..." (may be empty)
  ARGV[4] refund: "1" when the attempt never reached the network
  ARGV[5] "1" when the send was counted in the conversion hash: every send, counted by the
          script that charged it (countSent.lua), a test number's excepted (the record says so)
  ARGV[6] the event's stream id, when it is in the stream already (the status consumer): a
          `failed` that fails the request records it as `final_event` ("" or absent: not known)

  Returns the status after the event, or false when the record is gone.
]]
--- @include "dropSealedCode"
--- @include "refundCharge"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
local st = ARGV[1]

-- Only the send that never reached the network is refunded: a resend's own price (send_cost), else the request's.
local function refund()
  local r = redis.call('HMGET', KEYS[1], 'send_cost', 'cost', 'method', 'country', 'test_number')
  -- A test number's send was never counted (createVerification-9): no country, as cancel and expiry do.
  refundCharge(KEYS[2], KEYS[1], KEYS[3], KEYS[4], r[3], tonumber(r[1] or r[2] or '0'), ARGV[5] == '1' and not r[5] and r[4] or nil)
end

local terminal = (status == 'verified' or status == 'expired' or status == 'failed' or status == 'canceled')
if terminal and not (st == 'delivered' and status == 'verified') then
  if st == 'failed' and ARGV[4] == '1' and redis.call('HSETNX', KEYS[1], 'refunded', '1') == 1 then refund() end
  return status
end
if redis.call('HSETNX', KEYS[1], 'at_' .. st, ARGV[2]) == 0 then
  -- Delivered already, by an earlier send: a resend's call (or message) that got through is now the request's, and its
  -- fields (range, call_id, trunk ...) replace the earlier send's. The first delivery's time stays the history's.
  if not (st == 'delivered' and not terminal) then return status end
end

if ARGV[3] ~= '' then
  local parts = {}
  for line in string.gmatch(ARGV[3], '([^\n]*)\n?') do table.insert(parts, line) end
  for i = 1, #parts - 1, 2 do
    if parts[i] ~= '' then redis.call('HSET', KEYS[1], parts[i], parts[i + 1]) end
  end
end

if terminal then return status end
if st == 'delivered' and status == 'sent' then
  redis.call('HSET', KEYS[1], 'status', 'delivered')
  status = 'delivered'
elseif st == 'failed' then
  redis.call('HSET', KEYS[1], 'status', 'failed')
  if ARGV[6] and ARGV[6] ~= '' then redis.call('HSETNX', KEYS[1], 'final_event', ARGV[6]) end
  dropSealedCode(KEYS[1])
  status = 'failed'
  if ARGV[4] == '1' and redis.call('HSETNX', KEYS[1], 'refunded', '1') == 1 then refund() end
end
return status
