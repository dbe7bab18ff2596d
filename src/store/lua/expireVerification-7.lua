--[[
  Expire one verification whose time is up, whether or not anybody polls it.
  Called by the expiry sweeper for each request id due in the expiries set.
  Idempotent: only a `sent` or `delivered` request past its expires_at turns
  `expired` (one `verification.expired` event); anything else just leaves the
  set. A request whose expires_at is still ahead stays in the set.

  Billing per attempt actually sent: when nothing of the current attempt (or
  send) left, it is refunded and taken out of the usage and conversion `sent`
  of the day it was charged (a test number's, never counted there, only of
  the usage), once (HSETNX `refunded`, or `att<n>_refunded` for a workflow
  step). Its delivery job, still waiting (no SMPP bind, a throttle back-off,
  a backlog), then finds the request past `sent` and drops it.
  "Nothing left" (the same rule in cancelVerification-6 and advanceWorkflow-8):
  no `dial_started` (no job claimed the attempt), or an SMS whose `sms_state`
  says no submit_sm can have been taken: unset (claimed, not submitted yet;
  `submitting` is written before submit_sm leaves), `retry` (refused for now,
  or no bind) or `refused` (refused late). See engine/sms-processor.ts.

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
--- @include "refundCharge"
--- @include "writeEvent"
local v = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'account_id', 'method',
  'dial_started', 'sms_state', 'wf_step', 'wf_steps', 'send_cost', 'cost', 'country', 'test_number', 'whq_until')
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
redis.call('HDEL', KEYS[1], 'code_enc')
redis.call('HSETNX', KEYS[1], 'at_expired', v[2])
redis.call('ZREM', KEYS[2], ARGV[1])

local sms = v[6]
local nothingSent = not v[5] or (v[4] == 'sms' and (not sms or sms == 'retry' or sms == 'refused'))
local refund, method, refunded = 0, v[4], false
if nothingSent then
  if v[7] and v[8] then
    local p = 'att' .. v[7] .. '_'
    if redis.call('HSETNX', KEYS[1], p .. 'refunded', '1') == 1 then
      refunded = true
      local a = redis.call('HMGET', KEYS[1], p .. 'cost', p .. 'method')
      refund, method = tonumber(a[1] or '0'), a[2] or method
      redis.call('HSET', KEYS[1], p .. 'cost', 0)
    end
  elseif redis.call('HSETNX', KEYS[1], 'refunded', '1') == 1 then
    refunded = true
    -- A resend not sent yet: only its own price (send_cost); the earlier sends went out.
    refund = tonumber(v[9] or v[10] or '0')
  end
end
-- A test number's send was never counted in the conversion hash (it never reaches the network): no country.
if refunded then refundCharge(KEYS[4], KEYS[1], KEYS[5], KEYS[6], method, refund, not v[12] and v[11] or nil) end
writeEvent(KEYS[3], ARGV[3], KEYS[7], v[13], 'expired', ARGV[1], v[3], v[4], v[2], '{"reason":"expired"}')
return {'expired', refund}
