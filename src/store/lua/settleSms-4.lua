--[[
  Record the final outcome of an SMS (a final delivery receipt, or the
  `smsc_unconfirmed` deadline) AND write its event to the events stream, in one
  atomic step: a crash can no longer leave a receipt recorded whose event was
  never written. The parked copy of the receipt (if any) is deleted in the
  same step. One final outcome per verification (sms_receipt): an SMSC that
  sends a receipt again, or a DELIVRD after the deadline failed it, changes
  nothing, so a verification never gets both `failed` and `delivered`.

  KEYS[1] verification hash
  KEYS[2] events stream
  KEYS[3] early-receipt string to delete (<prefix>:smsdlr:<smsc>:<id>)
  KEYS[4] webhook order set of the request (writeEvent.lua)

  ARGV[1] message id ("" = not checked against the step's ids)
  ARGV[2] state to record in sms_receipt ("" = intermediate: record nothing)
  ARGV[3] workflow step the event is for ("" = not a workflow)
  ARGV[4..] XADD arguments after the key (EventPublisher.streamArgs)

  A failure receipt for a message an SMS resend has superseded (sms_superseded_ids, set by
  resendVerification-5) settles nothing: the new message may well arrive. A DELIVRD for one still does.
  The failure is noted (sms_superseded_failed, its message id): should the resend not be sent at all
  (settleRefusedResend-4), the request is not left waiting for a receipt that has come.

  Returns published | pending | duplicate | gone | other_step | superseded.
]]
--- @include "writeEvent"
-- Writes come last, the event first: Redis does not roll a script back when a command fails,
-- so an XADD error leaves the receipt unrecorded and still parked, for the SMSC's resend or the job's re-run.
local v = redis.call('HMGET', KEYS[1], 'account_id', 'wf_step', 'wf_steps', 'sms_message_ids', 'sms_receipt', 'sms_superseded_ids', 'whq_until')
local verdict
if not v[1] then
  verdict = 'gone'
elseif v[2] and v[3] and (ARGV[3] ~= v[2]
    or (ARGV[1] ~= '' and not string.find(' ' .. (v[4] or '') .. ' ', ' ' .. ARGV[1] .. ' ', 1, true))) then
  -- A workflow step's receipt: one for the SMS of a step that is over changes nothing.
  verdict = 'other_step'
elseif ARGV[2] == '' then
  verdict = 'pending'
elseif v[6] and ARGV[2] ~= 'DELIVRD' and ARGV[1] ~= ''
    and string.find(' ' .. v[6] .. ' ', ' ' .. ARGV[1] .. ' ', 1, true) then
  verdict = 'superseded'
  local failed = redis.call('HGET', KEYS[1], 'sms_superseded_failed')
  redis.call('HSET', KEYS[1], 'sms_superseded_failed', failed and (failed .. ' ' .. ARGV[1]) or ARGV[1])
elseif v[5] then
  verdict = 'duplicate'
else
  recordWebhookOrder(KEYS[4], xaddEvent(KEYS[2], ARGV, 4, v[7]), v[7])
  redis.call('HSET', KEYS[1], 'sms_receipt', ARGV[2])
  verdict = 'published'
end
redis.call('DEL', KEYS[3])
return verdict
