--[[
  Gives one attempt's charge back, the caller having found that nothing of it
  left (and taken its `refunded` / `att<n>_refunded` guard, or, undoResend-4,
  found it not taken and put the resend away: once per attempt):
  `amount` to the account's balance (when the account still exists) and out of
  the record's `cost`; one `<method>:count` and `amount` of `<method>:cost` out
  of the account's usage (GET /v1/usage); and, given a `country`, one
  `country:<cc>:<method>:sent` out of the per-country conversion hash (counted
  by the script that charged the send, countSent.lua; no country for a send
  never counted there: a test number's). The usage and conversion keys are those of
  the day the attempt was charged (verification/types.ts chargeDay), which is
  not always today. Included (`--- @include "refundCharge"`) by every script
  that refunds an attempt, so that they all give back the same things.

  The conversion count is taken out only while it is above 0. A send charged
  by this version is always counted there before its refund can run (its
  charging script counted it, countSent.lua), so this changes nothing for it;
  a send charged before this version may never have been counted (its request
  queued by the enqueue reconciler after its api process died, or its count
  lost with a crashed process's counter batch), and its refund must not take
  `sent` below zero. Such a refund still takes one from a day whose count is
  above 0 (other sends counted there): a count off by one for requests from
  the upgrade window, never a negative one. So a refund never creates the hash
  either, and sets no TTL.
]]
local function refundCharge(accountKey, recordKey, usageKey, conversionKey, method, amount, country)
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
    local field = 'country:' .. country .. ':' .. method .. ':sent'
    if tonumber(redis.call('HGET', conversionKey, field) or '0') > 0 then redis.call('HINCRBY', conversionKey, field, -1) end
  end
end
