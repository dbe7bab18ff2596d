--[[
  Match a delivery receipt to its verification: by message id, else (a
  submit whose submit_sm_resp never came: `smsc_unconfirmed`) by the SMSC and
  the handset number it reports. When nothing matches yet (the receipt came
  before its submit_sm_resp), the receipt is parked under its message id for
  mapSmsMessage-5 to pick up, and its id is noted under the SMSC and number,
  for a submit that turns out unconfirmed just after (markSmsWaiting-3). A
  parked final receipt is never replaced by an intermediate one (ENROUTE after
  DELIVRD).

  KEYS[1] message-id map string     (<prefix>:smsid:<smsc>:<id>)
  KEYS[2] early-receipt string      (<prefix>:smsdlr:<smsc>:<id>)
  KEYS[3] unconfirmed-submit string (<prefix>:smsunc:<smsc>:<hmac of number>)
  KEYS[4] parked-by-number string   (<prefix>:smsdlrnum:<smsc>:<hmac of number>)

  ARGV[1] receipt as JSON, with a boolean `final`
  ARGV[2] TTL of a parked receipt, seconds
  ARGV[3] "1" when the receipt is final
  ARGV[4] message id, noted under KEYS[4] ("" = the receipt has no number)
  ARGV[5] TTL of KEYS[4], seconds

  Returns {map value, "mapped"} (the map's "<request id> <account id> <step> <steps>", see
  mapSmsMessage-5), {request id, "unconfirmed"}, or false when parked.
]]
local requestId = redis.call('GET', KEYS[1])
if requestId then return {requestId, 'mapped'} end
requestId = redis.call('GET', KEYS[3])
if requestId then return {requestId, 'unconfirmed'} end
if ARGV[3] ~= '1' then
  local parked = redis.call('GET', KEYS[2])
  if parked then
    local ok, old = pcall(cjson.decode, parked)
    if ok and type(old) == 'table' and old.final == true then return false end
  end
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[2]))
if ARGV[4] ~= '' then redis.call('SET', KEYS[4], ARGV[4], 'EX', tonumber(ARGV[5])) end
return false
