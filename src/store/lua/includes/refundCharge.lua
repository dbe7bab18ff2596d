--[[
  Gives one attempt's charge back, the caller having found that nothing of it
  left (and taken its `refunded` / `att<n>_refunded` guard: once per attempt):
  `amount` to the account's balance (when the account still exists) and out of
  the record's `cost`; one `<method>:count` and `amount` of `<method>:cost` out
  of the account's usage (GET /v1/usage); and, given a `country`, one
  `country:<cc>:<method>:sent` out of the per-country conversion hash (counted
  by the script that charged the send, countSent.lua; no country for a send
  never counted there: a test number's). The usage and conversion keys are those of
  the day the attempt was charged (verification/types.ts chargeDay), which is
  not always today. Included (`--- @include "refundCharge"`) by every script
  that refunds an attempt, so that they all give back the same things.
]]
local function refundCharge(accountKey, recordKey, usageKey, conversionKey, conversionTtlMs, method, amount, country)
  if amount > 0 then
    if redis.call('EXISTS', accountKey) == 1 then redis.call('HINCRBY', accountKey, 'balance', amount) end
    redis.call('HINCRBY', recordKey, 'cost', -amount)
  end
  if not method then return end
  if redis.call('EXISTS', usageKey) == 1 then
    redis.call('HINCRBY', usageKey, method .. ':count', -1)
    if amount > 0 then redis.call('HINCRBY', usageKey, method .. ':cost', -amount) end
  end
  if country then
    -- The send's +1 may still wait in a counter batch (250 ms): the hash may not exist yet.
    redis.call('HINCRBY', conversionKey, 'country:' .. country .. ':' .. method .. ':sent', -1)
    if redis.call('TTL', conversionKey) < 0 then redis.call('PEXPIRE', conversionKey, tonumber(conversionTtlMs)) end
  end
end
