--[[
  A submit taken as unconfirmed (no submit_sm_resp within the response
  timeout) got its response after all, and it is a refusal: a non-zero
  command_status, so the SMSC took nothing and nothing will be delivered.
  Record it for the delivery job, which settles it as it settles the same
  refusal in time (retried while attempts are left, else failed, refunded),
  and take the request out of the submits waiting by number, so that no
  receipt is ever matched to it (matchSmsReceipt-5).

  KEYS[1] verification hash
  KEYS[2] unconfirmed submits, zset (<prefix>:smsuncs:<smsc>:<hmac of number>)

  ARGV[1] request id
  ARGV[2] workflow step of the submit ("" = not a workflow request): a step that is over is left alone
  ARGV[3] the refusal: a SubmitOutcome of kind retry | failed, as JSON (kept in sms_refusal)

  Returns {state before, job id} when recorded: state `unconfirmed` (the job waits in BullMQ's delayed set for
  its deadline: wake it; job id "" when not known) or `submitting` (the job has not marked it unconfirmed yet,
  and finds the refusal itself); {"ignored", state} when the delivery moved on (accepted by a receipt matched
  meanwhile, settled, another workflow step, not an SMS any more).
]]
local v = redis.call('HMGET', KEYS[1], 'method', 'sms_state', 'wf_step', 'sms_job')
local state = v[2] or ''
if v[1] ~= 'sms' or (ARGV[2] ~= '' and v[3] ~= ARGV[2]) or (state ~= 'unconfirmed' and state ~= 'submitting') then
  return {'ignored', state}
end
redis.call('HSET', KEYS[1], 'sms_state', 'refused', 'sms_refusal', ARGV[3])
redis.call('HDEL', KEYS[1], 'sms_unconfirmed_until')
redis.call('ZREM', KEYS[2], ARGV[1])
return {state, v[4] or ''}
