--[[
  Cancel a live verification (POST /v1/verify/{id}/cancel): status
  `canceled`, which delivery jobs, step timeouts and the workflow advancer
  all treat as final, so pending steps never start. The delivery claim is
  taken (`dial_started`) so a job that has not dialled yet never will; when
  nothing of the current attempt (or send) left (no job claimed it, or an SMS
  not submitted yet: waiting for a bind or a throttle back-off), it is refunded
  and taken out of the usage and the per-country conversion `sent` of the day
  it was charged (billing per attempt actually sent), once.
  A voice call in progress is ended by its worker, which watches the status;
  a flash call ringing is CANCELled by its worker too (engine/attempt-state.ts).

  The caller picks KEYS[4] and KEYS[5] from when the current attempt was
  charged (`att<wf_step>_started_at`, else `last_send_at`, else `created_at`:
  verification/types.ts chargedAt) and passes that time as ARGV[4]; if the
  attempt changed since it read it (a workflow step started, a resend was
  paid, maybe on the next day), this changes nothing and returns {"moved"}:
  read again and retry.

  KEYS[1] verification hash
  KEYS[2] account hash
  KEYS[3] events stream
  KEYS[4] usage hash of the account for the day the current attempt (or send) was charged
  KEYS[5] conversion hash of that day (countSent.lua)
  KEYS[6] webhook order set of the request (writeEvent.lua)

  ARGV[1] account_id of the caller
  ARGV[2] now (ms since epoch)
  ARGV[3] events stream MAXLEN (approximate)
  ARGV[4] when the current attempt was charged, as the caller read it ("" when it read none)

  Returns {"ok", refunded_micro} | {"not_found"} | {"not_live", status} | {"moved"}
]]
--- @include "dropSealedCode"
--- @include "refundCharge"
--- @include "writeEvent"
local v = redis.call('HMGET', KEYS[1], 'account_id', 'status', 'wf_step', 'wf_steps', 'method', 'cost', 'request_id',
  'last_send_at', 'created_at', 'country', 'test_number', 'whq_until')
if not v[1] or v[1] ~= ARGV[1] then return {'not_found'} end
local status = v[2]
if (status ~= 'sent' and status ~= 'delivered') or tonumber(ARGV[2]) >= tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '0') then
  return {'not_live', status}
end
local chargedAt = v[8] or v[9]
if v[4] then chargedAt = redis.call('HGET', KEYS[1], 'att' .. v[3] .. '_started_at') end
if (chargedAt or '') ~= ARGV[4] then return {'moved'} end
redis.call('HSET', KEYS[1], 'status', 'canceled')
dropSealedCode(KEYS[1])
redis.call('HSETNX', KEYS[1], 'at_canceled', ARGV[2])
-- Nothing of the current attempt left (the same rule in expireVerification-7 and advanceWorkflow-8): no
-- job claimed it, or an SMS whose submit_sm cannot have been taken: sms_state unset (claimed, not submitted:
-- `submitting` is written before submit_sm leaves), `retry` (refused for now, or no bind) or `refused`.
local undialled = redis.call('HSETNX', KEYS[1], 'dial_started', 'canceled') == 1
if not undialled and v[5] == 'sms' then
  local sms = redis.call('HGET', KEYS[1], 'sms_state')
  undialled = not sms or sms == 'retry' or sms == 'refused'
end

local refund = 0
local refunded = false
local method = v[5]
if v[4] then
  local p = 'att' .. v[3] .. '_'
  local ast = redis.call('HGET', KEYS[1], p .. 'status')
  if ast == 'sent' or ast == 'delivered' then
    redis.call('HSET', KEYS[1], p .. 'status', 'canceled')
    redis.call('HSETNX', KEYS[1], p .. 'ended_at', ARGV[2])
  end
  if undialled and redis.call('HSETNX', KEYS[1], p .. 'refunded', '1') == 1 then
    refunded = true
    refund = tonumber(redis.call('HGET', KEYS[1], p .. 'cost') or '0')
    method = redis.call('HGET', KEYS[1], p .. 'method') or method
    redis.call('HSET', KEYS[1], p .. 'cost', 0)
  end
elseif undialled and redis.call('HSETNX', KEYS[1], 'refunded', '1') == 1 then
  refunded = true
  -- A resend not dialled yet: only its own price (send_cost); the earlier sends went out.
  refund = tonumber(redis.call('HGET', KEYS[1], 'send_cost') or v[6] or '0')
end
-- A test number's send was never counted in the conversion hash (it never reaches the network): no country.
if refunded then refundCharge(KEYS[2], KEYS[1], KEYS[4], KEYS[5], method, refund, not v[11] and v[10] or nil) end
redis.call('HSETNX', KEYS[1], 'final_event', writeEvent(KEYS[3], ARGV[3], KEYS[6], v[12], 'canceled', v[7], v[1], v[5], ARGV[2], '{}'))
return {'ok', refund}
