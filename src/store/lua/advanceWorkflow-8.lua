--[[
  Start the next step of a workflow, once: a compare-and-set on the record's
  current step index (`wf_step`), so the same `failed` or `step_timeout`
  event processed twice (redelivered, reclaimed after a crash, or handled by
  two advancers) starts step n+1 at most once. Pays for the step with the
  same debit as createVerification-9; a step that cannot be paid fails the
  verification (insufficient_balance; account_suspended when the account is
  no longer active), and so does one the caller refused
  (ARGV[11], e.g. rate_limited: the velocity windows are full). Swaps in the
  step's method and sealed code and clears every field the previous step's
  delivery wrote (call outcome, SIP status, call id, trunk, DID range, failure
  reason ...), so exactly one delivery job (<request_id>-s<n+1>) may claim it
  and a verification at step n+1 is never credited to step n's DID range.
  A step that timed out before anything of it left (never claimed, or an SMS
  not submitted: no bind, throttled) is refunded, once (`att<n>_refunded`),
  and taken out of the usage and the per-country conversion `sent` of the
  day it was charged (KEYS[5], KEYS[6]: the UTC day of `att<n>_started_at`,
  which may be yesterday when the step started before midnight), not of
  today's, where the next step is charged (KEYS[3]) and counted in the
  conversion `sent` (KEYS[8], countSent.lua): in this same step, so a crash of
  the advancer after it neither loses the count (the step is queued again by
  whoever reclaims the event) nor makes it twice.

  KEYS[1] verification hash
  KEYS[2] account hash
  KEYS[3] usage hash of the account for today (the day of ARGV[2]): the next step is counted there
  KEYS[4] events stream
  KEYS[5] usage hash of the account for the day the ending step was charged (att<n>_started_at)
  KEYS[6] conversion hash of that day (countSent.lua): a refunded step leaves its
          `country:<cc>:<method>:sent`
  KEYS[7] webhook order set of the request: a `failed` written here is filed in it
          (writeEvent.lua); `step_started`, never a webhook, is not
  KEYS[8] conversion hash of today (the day of ARGV[2]): the next step's send is counted there

  ARGV[1]  step the event is about (the expected current wf_step)
  ARGV[2]  now (ms since epoch)
  ARGV[3]  method of the next step
  ARGV[4]  cost of the next step, micro-units of the account's currency
  ARGV[5]  code_mac of the next step's code
  ARGV[6]  code_enc of the next step's code (sealed)
  ARGV[7]  code_length of the next step
  ARGV[8]  why the step ends: "failed" | "timeout"
  ARGV[9]  events stream MAXLEN (approximate)
  ARGV[10] usage TTL (seconds)
  ARGV[11] why the next step may not start ("" = it may): the verification fails with it
  ARGV[12] TTL of the conversion hash of today (ms), set when the count creates its field

  Returns {"ok", next_step} | {"moved", current_step} | {"done", status} |
    {"last"} | {"expired"} | {"gone"} | {"insufficient_balance" | ARGV[11], next_step}
]]
--- @include "dropSealedCode"
--- @include "countSent"
--- @include "refundCharge"
--- @include "writeEvent"
local v = redis.call('HMGET', KEYS[1], 'status', 'wf_step', 'wf_steps', 'account_id', 'expires_at', 'cost', 'whq_until', 'country')
local status = v[1]
if not status or not v[2] or not v[3] then return {'gone'} end
local cur, steps, from = tonumber(v[2]), tonumber(v[3]), tonumber(ARGV[1])
if cur ~= from then return {'moved', cur} end
if status ~= 'sent' and status ~= 'delivered' then return {'done', status} end
if from + 1 >= steps then return {'last'} end
local now = tonumber(ARGV[2])
if now >= tonumber(v[5]) then return {'expired'} end

local p = 'att' .. from .. '_'
if ARGV[8] == 'timeout' then
  local ast = redis.call('HGET', KEYS[1], p .. 'status')
  if ast == 'sent' or ast == 'delivered' then
    redis.call('HSET', KEYS[1], p .. 'status', 'timed_out')
    redis.call('HSETNX', KEYS[1], p .. 'ended_at', ARGV[2])
  end
  -- Nothing of the step left (the same rule in expireVerification-7 and cancelVerification-6): no job
  -- claimed it, or an SMS whose submit_sm cannot have been taken: sms_state unset (claimed, not submitted:
  -- `submitting` is written before submit_sm leaves), `retry` (refused for now, or no bind) or `refused`.
  local d = redis.call('HMGET', KEYS[1], 'dial_started', 'sms_state', p .. 'method', p .. 'cost', 'country')
  local nothingSent = not d[1] or (d[3] == 'sms' and (not d[2] or d[2] == 'retry' or d[2] == 'refused'))
  if nothingSent and redis.call('HSETNX', KEYS[1], p .. 'refunded', '1') == 1 then
    local refund = tonumber(d[4] or '0')
    refundCharge(KEYS[2], KEYS[1], KEYS[5], KEYS[6], d[3], refund, d[5])
    if refund > 0 then
      v[6] = tostring(tonumber(v[6] or '0') - refund)
      redis.call('HSET', KEYS[1], p .. 'cost', 0)
    end
  end
end

local nxt = from + 1
local q = 'att' .. nxt .. '_'
local cost = tonumber(ARGV[4])
local balance = tonumber(redis.call('HGET', KEYS[2], 'balance') or '-1')
local refused = ARGV[11]
if not refused or refused == '' then
  refused = nil
  local accountStatus = redis.call('HGET', KEYS[2], 'status')
  if not accountStatus or balance < cost then
    refused = 'insufficient_balance'
  elseif accountStatus ~= 'active' then
    -- Suspended (or pending) since the request was created: as createVerification-9 and resendVerification-5 refuse
    -- to start a send for such an account, its later steps do not start either.
    refused = 'account_suspended'
  end
end
if refused then
  -- The step refused is the current one: its method is the record's (as the event below and GET say).
  redis.call('HSET', KEYS[1], 'wf_step', nxt, 'method', ARGV[3], 'status', 'failed', 'failure_reason', refused,
    q .. 'method', ARGV[3], q .. 'status', 'failed', q .. 'cost', 0, q .. 'started_at', ARGV[2],
    q .. 'ended_at', ARGV[2], q .. 'reason', refused)
  redis.call('HSETNX', KEYS[1], 'at_failed', ARGV[2])
  dropSealedCode(KEYS[1])
  redis.call('HSETNX', KEYS[1], 'final_event', writeEvent(KEYS[4], ARGV[9], KEYS[7], v[7], 'failed', redis.call('HGET', KEYS[1], 'request_id'), v[4], ARGV[3], ARGV[2],
    cjson.encode({reason = refused})))
  return {refused, nxt}
end
if cost > 0 then redis.call('HINCRBY', KEYS[2], 'balance', -cost) end

-- Everything the previous step's delivery (claimDelivery, the processors, status-consumer's event patch) wrote.
redis.call('HDEL', KEYS[1], 'dial_started', 'rang_at', 'answered_at', 'outcome', 'final_sip_status', 'cli_range', 'cli_quarantined',
  'sms_state', 'sms_attempts', 'sms_receipt', 'sms_smsc', 'sms_message_id', 'sms_message_ids', 'sms_superseded_ids',
  'sms_unconfirmed_until', 'sms_nobind_since', 'sms_waits', 'refunded',
  'range', 'sip_status', 'call_id', 'trunk', 'failure_reason')
-- The step ending keeps its code's MAC (never the code): a check with it gets a clear answer, not a spent attempt.
local prevMac = redis.call('HGET', KEYS[1], 'code_mac')
if prevMac then redis.call('HSET', KEYS[1], 'att' .. from .. '_code_mac', prevMac) end
redis.call('HSET', KEYS[1], 'wf_step', nxt, 'method', ARGV[3], 'code_mac', ARGV[5], 'code_enc', ARGV[6],
  'code_length', ARGV[7], 'cost', tonumber(v[6] or '0') + cost,
  q .. 'method', ARGV[3], q .. 'status', 'sent', q .. 'cost', cost, q .. 'started_at', ARGV[2])

redis.call('HINCRBY', KEYS[3], ARGV[3] .. ':count', 1)
redis.call('HINCRBY', KEYS[3], ARGV[3] .. ':cost', cost)
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[10]))
if v[8] then countSent(KEYS[8], ARGV[12], v[8], ARGV[3]) end

redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*',
  'event', 'verification.step_started', 'request_id', redis.call('HGET', KEYS[1], 'request_id'), 'account_id', v[4],
  'method', ARGV[3], 'status', 'step_started', 'timestamp', ARGV[2], 'step', nxt, 'steps', steps, 'detail', '{}')
return {'ok', nxt}
