--[[
  Record that the SMSC accepted a verification's submit_sm (its
  submit_sm_resp, a late one, or a receipt that matched an unconfirmed
  submit), and hand back a delivery receipt that arrived before it (some SMSCs
  send the receipt first). The parked receipt is NOT deleted here:
  settleSms-4 deletes it in the same step that records it and writes its
  event, so a crash in between leaves it parked for the job's re-run.

  Every message id of the verification stays mapped (sms_message_ids), so a
  receipt for an earlier message of the same step still matches.

  KEYS[1] verification hash
  KEYS[2] message-id map string    (<prefix>:smsid:<smsc>:<id>): "<request id> <account id> <step> <steps>"
                                   (step and steps empty outside a workflow; a value of an older
                                   version is the request id alone)
  KEYS[3] early-receipt string     (<prefix>:smsdlr:<smsc>:<id>)
  KEYS[4] unconfirmed submits, zset (<prefix>:smsuncs:<smsc>:<hmac of number>): this request leaves it
  KEYS[5] receipts parked by number, zset (<prefix>:smsdlrnums:<smsc>:<hmac of number>): this message leaves it
  KEYS[6] submits in flight to the number, zset (<prefix>:smsinflight:<hmac of number>): this request leaves it

  ARGV[1] request id
  ARGV[2] TTL of the map, seconds
  ARGV[3] SMSC name
  ARGV[4] normalised message id
  ARGV[5] the workflow step of the submit ("" = not a workflow request, or not known): when
          the request has moved on to another step meanwhile (this step timed out while
          submit_sm was in flight), the record is left alone, so that neither this
          message's state nor its receipt is ever taken for the current step's. Without
          it (a late accept, whose step is not known), the record is left alone when its
          current method is not sms.

  Returns {the parked receipt (JSON), the map's value} when a receipt is waiting, else false.
]]
local v = redis.call('HMGET', KEYS[1], 'account_id', 'wf_step', 'method', 'wf_steps')
-- The map names the request, its account and the workflow step of the submit: a receipt then needs
-- no read of the record to write its event (matchSmsReceipt-5 hands these back).
local mapped = ARGV[1]
if v[1] then
  local step = (ARGV[5] ~= nil and ARGV[5] ~= '') and ARGV[5] or (v[2] or '')
  mapped = ARGV[1] .. ' ' .. v[1] .. ' ' .. step .. ' ' .. ((step ~= '' and v[4]) or '')
end
redis.call('SET', KEYS[2], mapped, 'EX', tonumber(ARGV[2]))
if v[1] and v[3] == 'sms' and (not ARGV[5] or ARGV[5] == '' or v[2] == ARGV[5]) then
  redis.call('HSET', KEYS[1], 'sms_state', 'accepted', 'sms_smsc', ARGV[3], 'sms_message_id', ARGV[4])
  redis.call('HDEL', KEYS[1], 'sms_unconfirmed_until')
  local ids = redis.call('HGET', KEYS[1], 'sms_message_ids') or ''
  if not string.find(' ' .. ids .. ' ', ' ' .. ARGV[4] .. ' ', 1, true) then
    redis.call('HSET', KEYS[1], 'sms_message_ids', ids == '' and ARGV[4] or (ids .. ' ' .. ARGV[4]))
  end
end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[4])
redis.call('ZREM', KEYS[6], ARGV[1])
local early = redis.call('GET', KEYS[3])
if early then return {early, mapped} end
return false
