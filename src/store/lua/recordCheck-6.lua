--[[
  Count one check attempt and apply its result, atomically. The code itself
  was compared in constant time by the caller, against the MAC it read; this
  script refuses to apply a result if that MAC changed in between.

  KEYS[1] verification hash
  KEYS[2] events stream
  KEYS[3] usage hash of the account for the day the attempt was charged (its `verified` count)
  KEYS[4] webhook order set of the request (writeEvent.lua)
  KEYS[5] account hash (the refund of an attempt that never left, when the check ends the request)
  KEYS[6] conversion hash of the day the attempt was charged (refundCharge.lua)

  ARGV[1] code_mac the caller compared against
  ARGV[2] matched: "1" or "0"
  ARGV[3] now (ms since epoch)
  ARGV[4] max attempts
  ARGV[5] events stream MAXLEN (approximate)
  ARGV[6] usage TTL (seconds)

  Returns {result, attempts_remaining}, result one of:
    verified | invalid_code | expired | already_verified | failed | canceled | not_found | stale
]]
--- @include "dropSealedCode"
--- @include "refundCharge"
--- @include "refundUnsent"
--- @include "writeEvent"
local v = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'attempts', 'code_mac',
  'request_id', 'account_id', 'method', 'whq_until')
local status, expires_at, attempts, mac = v[1], tonumber(v[2]), tonumber(v[3]), v[4]
if not status then return {'not_found', 0} end
if status == 'verified' then return {'already_verified', 0} end
if status == 'expired' then return {'expired', 0} end
if status == 'failed' then return {'failed', 0} end
if status == 'canceled' then return {'canceled', 0} end
local now = tonumber(ARGV[3])
local max = tonumber(ARGV[4])
-- The code changed after the caller read it (a workflow step started, a flash CLI cooldown picked a new code):
-- nothing counted, and the attempts actually left (the caller checks again against the new code).
if mac ~= ARGV[1] then
  local left = max - (attempts or 0)
  if left < 0 then left = 0 end
  return {'stale', left}
end

-- The final event: its stream id is the record's `final_event` (webhook-processor.ts orders deliveries by it).
local function emit(st)
  redis.call('HSETNX', KEYS[1], 'final_event', writeEvent(KEYS[2], ARGV[5], KEYS[4], v[8], st, v[5], v[6], v[7], ARGV[3], '{}'))
end

-- Past its time: the answer is `expired`, nothing counted. The record itself is left to the expiry sweeper
-- (expireVerification-7, within expirySweepMs), which also refunds an attempt that never left: a check must not
-- end the request on its own and skip that refund (GET already shows an overdue request as expired).
if now >= expires_at then return {'expired', 0} end

attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'status', 'verified', 'verified_at', ARGV[3])
  dropSealedCode(KEYS[1])
  redis.call('HSETNX', KEYS[1], 'at_verified', ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'verified', 1)
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
  -- Its current attempt (or send) refunded if it never left: a resend still throttled when the earlier code verifies.
  refundUnsent(KEYS[1], KEYS[5], KEYS[3], KEYS[6], true)
  emit('verified')
  return {'verified', max - attempts}
end
if attempts >= max then
  redis.call('HSET', KEYS[1], 'status', 'expired')
  dropSealedCode(KEYS[1])
  redis.call('HSETNX', KEYS[1], 'at_expired', ARGV[3])
  -- Ended as an expiry does: an attempt that never left (an SMS still throttled, a call in a backlog) is refunded.
  refundUnsent(KEYS[1], KEYS[5], KEYS[3], KEYS[6], false)
  emit('expired')
end
local remaining = max - attempts
if remaining < 0 then remaining = 0 end
return {'invalid_code', remaining}
