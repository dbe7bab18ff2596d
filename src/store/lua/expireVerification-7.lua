--[[
  Expire one verification whose time is up, whether or not anybody polls it.
  Called by the expiry sweeper for each request id due in the expiries set.
  Idempotent: only a `sent` or `delivered` request past its expires_at turns
  `expired` (one `verification.expired` event); anything else just leaves the
  set. A request whose expires_at is still ahead stays in the set.

  Billing per attempt actually sent: when nothing of the current attempt (or
  send) left, it is refunded and taken out of the usage and conversion `sent`
  of the day it was charged (refundUnsent.lua: the rule, shared with
  recordCheck-6).

  KEYS[1] verification hash
  KEYS[2] expiries sorted set
  KEYS[3] events stream
  KEYS[4] account hash (for the refund)
  KEYS[5] usage hash of the account for the day the current attempt (or send) was charged
          (`att<wf_step>_started_at`, else `last_send_at`, else `created_at`: verification/types.ts chargedAt)
  KEYS[6] conversion hash of that day (countSent.lua)
  KEYS[7] webhook order set of the request (writeEvent.lua)

  ARGV[1] request_id (member of the expiries set)
  ARGV[2] now (ms since epoch)
  ARGV[3] events stream MAXLEN (approximate)

  Returns {"expired", refunded_micro} when this call expired it, {"pending"} when
  not due yet, else {"skipped"} (already terminal or gone).
]]
--- @include "dropSealedCode"
--- @include "refundCharge"
--- @include "refundUnsent"
--- @include "writeEvent"
local v = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'account_id', 'method', 'whq_until')
local status, expires_at = v[1], tonumber(v[2])
if not status or not expires_at then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'skipped'}
end
if status ~= 'sent' and status ~= 'delivered' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'skipped'}
end
if tonumber(ARGV[2]) < expires_at then return {'pending'} end

redis.call('HSET', KEYS[1], 'status', 'expired')
dropSealedCode(KEYS[1])
redis.call('HSETNX', KEYS[1], 'at_expired', v[2])
redis.call('ZREM', KEYS[2], ARGV[1])

local refund = refundUnsent(KEYS[1], KEYS[4], KEYS[5], KEYS[6], false)
redis.call('HSETNX', KEYS[1], 'final_event', writeEvent(KEYS[3], ARGV[3], KEYS[7], v[5], 'expired', ARGV[1], v[3], v[4], v[2], '{"reason":"expired"}'))
return {'expired', refund}
