--[[
  Counts one send in the per-country conversion hash of the day it is charged
  (`country:<cc>:<method>:sent`, FraudControls.conversion reads it): called by
  every script that charges a send (createVerification-9, resendVerification-5,
  advanceWorkflow-8), in the same step as the charge and the usage count, never
  for a test number. So a send is counted exactly once whichever process queues
  its delivery job afterwards (the api, or the enqueue reconciler when the api
  died first), and a refund (refundCharge) always finds its count there: the
  refund is made after the charge, in the day the charge was counted in.

  The hash gets its TTL when this count creates the field (HINCRBY answers 1):
  one command per send otherwise. A hash created by anything else got its TTL
  from that writer (the counter batch sets it on every flush).
]]
local function countSent(conversionKey, conversionTtlMs, country, method)
  if redis.call('HINCRBY', conversionKey, 'country:' .. country .. ':' .. method .. ':sent', 1) == 1 then
    redis.call('PEXPIRE', conversionKey, tonumber(conversionTtlMs))
  end
end
