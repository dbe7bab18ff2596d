--[[
  Match a delivery receipt to its verification: by message id, else (a
  submit whose submit_sm_resp never came: `smsc_unconfirmed`) by the SMSC and
  the handset number it reports, but only when that is unambiguous: exactly
  one unconfirmed submit waits for that number on that SMSC, and no other
  submit to the number is in flight (KEYS[5]: its submit_sm_resp, with the id
  of this very receipt, may be on its way: some SMSCs send the receipt first).
  With two or more waiting (two accounts texting one number, a resend), or one
  in flight, the receipt could be either's: it is not guessed, and is left to
  match by message id (a submit_sm_resp maps it) or to the deadline. When nothing matches (the
  receipt came before its submit_sm_resp, or the number is ambiguous), the
  receipt is parked under its message id for mapSmsMessage-6 to pick up, and
  its id is noted under the SMSC and number, for a submit that turns out
  unconfirmed just after (markSmsWaiting-4). A parked final receipt is never
  replaced by an intermediate one (ENROUTE after DELIVRD).

  KEYS[1] message-id map string      (<prefix>:smsid:<smsc>:<id>)
  KEYS[2] early-receipt string       (<prefix>:smsdlr:<smsc>:<id>)
  KEYS[3] unconfirmed submits, zset  (<prefix>:smsuncs:<smsc>:<hmac of number>): request id, scored by the
          time (ms) it stops waiting
  KEYS[4] receipts parked by number, zset (<prefix>:smsdlrnums:<smsc>:<hmac of number>): message id, scored by
          the time (ms) it is forgotten
  KEYS[5] submits in flight to the number, zset (<prefix>:smsinflight:<hmac of number>, markSmsSubmitting-2)

  ARGV[1] receipt as JSON, with a boolean `final`
  ARGV[2] TTL of a parked receipt, seconds
  ARGV[3] "1" when the receipt is final
  ARGV[4] message id, noted under KEYS[4] ("" = the receipt has no number: never matched by number)
  ARGV[5] how long it stays noted under KEYS[4], seconds
  ARGV[6] now, ms

  Returns {map value, "mapped"} (the map's "<request id> <account id> <step> <steps>", see mapSmsMessage-6),
  {request id, "unconfirmed"}, {"<request id> <request id> ...", "ambiguous"} (parked; those were waiting),
  {"<request id> ...", "in_flight"} (parked; those submits to the number were in flight, one or more waiting
  unconfirmed), or false when parked.
]]
local requestId = redis.call('GET', KEYS[1])
if requestId then return {requestId, 'mapped'} end
local now = tonumber(ARGV[6])
local waiting = {}
local flying = {}
if ARGV[4] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  waiting = redis.call('ZRANGE', KEYS[3], 0, -1)
  if #waiting > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
    flying = redis.call('ZRANGE', KEYS[5], 0, -1)
  end
  if #waiting == 1 and #flying == 0 then return {waiting[1], 'unconfirmed'} end
end
local keep = false
if ARGV[3] ~= '1' then
  local parked = redis.call('GET', KEYS[2])
  if parked then
    local ok, old = pcall(cjson.decode, parked)
    keep = ok and type(old) == 'table' and old.final == true
  end
end
if not keep then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[2]))
  if ARGV[4] ~= '' then
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
    redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]) * 1000, ARGV[4])
    redis.call('EXPIRE', KEYS[4], tonumber(ARGV[5]))
  end
end
if #flying > 0 then return {table.concat(flying, ' '), 'in_flight'} end
if #waiting > 1 then return {table.concat(waiting, ' '), 'ambiguous'} end
return false
