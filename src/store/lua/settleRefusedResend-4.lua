--[[
  An SMS resend (resendVerification-5) that the SMSC did not take (refused for
  good, throttled past sms.retry.maxAttempts, no bind within noBindMaxWaitMs:
  nothing of it was sent), on a request whose earlier message was accepted
  (its id is among `sms_superseded_ids`) or delivered: the request keeps that
  message, as a failure receipt of the resent one would leave it (settleSms-4),
  instead of failing with a code the user may already have. The resend is
  refunded once and the request put back as it was before it (the previous
  send's fields, from `resend_undo`), except `sends`: a later resend gets a new
  job id.

  KEYS[1] verification hash
  KEYS[2] account hash
  KEYS[3] usage hash of the account for the resend's day (its last_send_at)
  KEYS[4] conversion hash of that day

  ARGV[1] the resend's send number (the job's; `sends` on the record)
  ARGV[2] method (the usage field prefix)

  Returns 'kept' (refunded, the request keeps its earlier message; also when
  done already by an earlier run of the job), 'alone' (no earlier message was
  accepted, or every one's failure receipt has come meanwhile: the caller
  fails the request, the resend refunded, as for a first send),
  'ended' (the request is over: the caller's refunded failure gives the charge
  back) or 'gone' (another send, or no record: nothing to do).
]]
--- @include "resendUndo"
--- @include "refundCharge"
local v = redis.call('HMGET', KEYS[1], 'status', 'sends', 'resend_undo', 'send_cost', 'country', 'test_number',
  'sms_superseded_ids', 'resend_refused', 'sms_superseded_failed')
if not v[1] then return 'gone' end
if v[8] == ARGV[1] then return 'kept' end
if tonumber(v[2] or '1') ~= tonumber(ARGV[1]) then return 'gone' end
if v[1] ~= 'sent' and v[1] ~= 'delivered' then return 'ended' end
if not v[3] or (not v[7] and v[1] ~= 'delivered') then return 'alone' end
-- Not delivered, and every earlier message's failure receipt has come meanwhile (settleSms-4 noted it): nothing is
-- on its way any more.
if v[1] ~= 'delivered' then
  local failed = ' ' .. (v[9] or '') .. ' '
  local waiting = false
  for id in string.gmatch(v[7], '%S+') do
    if not string.find(failed, ' ' .. id .. ' ', 1, true) then waiting = true end
  end
  if not waiting then return 'alone' end
end
local undo = cjson.decode(v[3])
-- A test number's send was never counted in the conversion hash: no country.
if redis.call('HSETNX', KEYS[1], 'refunded', '1') == 1 then
  refundCharge(KEYS[2], KEYS[1], KEYS[3], KEYS[4], ARGV[2], tonumber(v[4] or '0'), not v[6] and v[5] or nil)
end
putBackSend(KEYS[1], undo, true)
-- sms_superseded_failed stays: a message that failed stays failed, and a later resend supersedes it again.
redis.call('HDEL', KEYS[1], 'resend_undo', 'sms_refusal')
redis.call('HSET', KEYS[1], 'resend_refused', ARGV[1])
return 'kept'
