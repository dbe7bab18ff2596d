--[[
  Record that the SMSC accepted a verification's submit_sm, and pick up a
  delivery receipt that arrived before its submit_sm_resp (some SMSCs send the
  receipt first). Runs atomically against matchSmsReceipt-2, so a receipt is
  matched exactly once whichever of the two comes first.

  KEYS[1] verification hash
  KEYS[2] message-id map string  (<prefix>:smsid:<smsc>:<id>)
  KEYS[3] early-receipt string   (<prefix>:smsdlr:<smsc>:<id>)

  ARGV[1] request id
  ARGV[2] TTL of the map, seconds
  ARGV[3] SMSC name
  ARGV[4] normalised message id
  ARGV[5] the workflow step of the submit ("" or absent = not a workflow request): when
          the request has moved on to another step meanwhile (this step timed out while
          submit_sm was in flight), the record is left alone, so that neither this
          message's state nor its receipt is ever taken for the current step's. Without
          it (a late accept, whose step is not known), the record is left alone when its
          current method is not sms.

  Returns the early receipt (JSON) when one was waiting, else false.
]]
redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[2]))
local v = redis.call('HMGET', KEYS[1], 'account_id', 'wf_step', 'method')
if v[1] and v[3] == 'sms' and (not ARGV[5] or ARGV[5] == '' or v[2] == ARGV[5]) then
  redis.call('HSET', KEYS[1], 'sms_state', 'accepted', 'sms_smsc', ARGV[3], 'sms_message_id', ARGV[4])
end
local early = redis.call('GET', KEYS[3])
if early then
  redis.call('DEL', KEYS[3])
  return early
end
return false
