--[[
  Mark an SMS delivery as waiting, unless the SMSC's (late) submit_sm_resp
  already marked it accepted (mapSmsMessage-6) or refused (markSmsRefused-2)
  in the meantime:
  - `retry`: nothing was accepted by the SMSC (throttled, queue full, no
    bind; also a refusal that came after the response timeout, `refused`,
    see markSmsRefused-2); the job is retried from BullMQ's delayed set.
  - `unconfirmed`: the submit_sm left but its response never came (timeout,
    connection lost). It is never sent again: a late submit_sm_resp or a
    receipt matched by number (KEYS[2], see matchSmsReceipt-5) resolves it,
    else it fails `smsc_unconfirmed` at its deadline (sms_unconfirmed_until).

  KEYS[1] verification hash
  KEYS[2] unconfirmed submits, zset (<prefix>:smsuncs:<smsc>:<hmac of number>); only written for `unconfirmed`
  KEYS[3] receipts parked by number, zset (<prefix>:smsdlrnums:<smsc>:<hmac of number>): the one receipt parked
          for this number while its submit was in flight (matchSmsReceipt-5) resolves it at once, if no other
          unconfirmed submit waits for the number and no other is in flight; two or more parked, or another one
          waiting or in flight: nothing is guessed
  KEYS[4] submits in flight to the number, zset (<prefix>:smsinflight:<hmac of number>): this request leaves it
          (its outcome is known), whatever the state

  ARGV[1] state: retry | unconfirmed
  ARGV[2] request id
  ARGV[3] how long it waits under KEYS[2] (its score: now + this; and the key's TTL), seconds
  ARGV[4] now, ms
  ARGV[5] the workflow step of the attempt ("" = not a workflow request); read for `retry` only
  ARGV[6..] field, value pairs to set on the verification

  Returns 1 when marked; 0 when the state was no longer `submitting` (nor,
  for `retry`, `refused`): a late submit_sm_resp accepted or refused it
  meanwhile; or (for `unconfirmed`) the message id of a receipt parked for
  this number: the caller records that id as accepted (mapSmsMessage-6)
  instead; or (for `retry`) 'ended': the request ended (canceled, expired,
  failed `interrupted` by another worker ...) or its step moved on while the
  submit waited for a bind or was throttled. Nothing was sent, and what ended
  it found the attempt `submitting` ("may have left") and billed it: the
  caller publishes a refunded failure, which gives the charge back once
  (applyEvent-4 / applyStepEvent-4), as markSmsWithdrawn-1's 'ended'.
]]
redis.call('ZREM', KEYS[4], ARGV[2])
local state = redis.call('HGET', KEYS[1], 'sms_state')
if ARGV[1] == 'retry' then
  local v = redis.call('HMGET', KEYS[1], 'status', 'wf_step')
  -- The step moved on: the record's sms_state is the next step's (or was cleared with it), not this attempt's.
  if ARGV[5] ~= '' and v[2] ~= ARGV[5] then return 'ended' end
  local live = v[1] == 'sent' or v[1] == 'delivered'
  if not live and (state == 'submitting' or state == 'refused') then return 'ended' end
end
if state ~= 'submitting' and not (ARGV[1] == 'retry' and state == 'refused') then return 0 end
local now = tonumber(ARGV[4])
if ARGV[1] == 'unconfirmed' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) == 0 and redis.call('ZCARD', KEYS[4]) == 0 then
    local parked = redis.call('ZRANGE', KEYS[3], 0, -1)
    if #parked == 1 then return parked[1] end
  end
end
redis.call('HSET', KEYS[1], 'sms_state', ARGV[1])
redis.call('HDEL', KEYS[1], 'sms_refusal')
for i = 6, #ARGV - 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[1] == 'unconfirmed' then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]) * 1000, ARGV[2])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
end
return 1
