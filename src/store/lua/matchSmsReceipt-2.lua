--[[
  Match a delivery receipt to its verification. When the submit_sm_resp has
  not been recorded yet (receipt first), the receipt is parked under its
  message id for mapSmsMessage-3 to pick up.

  KEYS[1] message-id map string  (<prefix>:smsid:<smsc>:<id>)
  KEYS[2] early-receipt string   (<prefix>:smsdlr:<smsc>:<id>)

  ARGV[1] receipt as JSON
  ARGV[2] TTL of a parked receipt, seconds

  Returns the request id, or false when the receipt was parked.
]]
local requestId = redis.call('GET', KEYS[1])
if requestId then return requestId end
redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[2]))
return false
