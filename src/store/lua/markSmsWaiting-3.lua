--[[
  Mark an SMS delivery as waiting, unless the SMSC's (late) submit_sm_resp
  already marked it accepted (mapSmsMessage-5) in the meantime:
  - `retry`: nothing was accepted by the SMSC (throttled, queue full, no
    bind); the job is retried from BullMQ's delayed set.
  - `unconfirmed`: the submit_sm left but its response never came (timeout,
    connection lost). It is never sent again: a late submit_sm_resp or a
    receipt matched by number (KEYS[2], see matchSmsReceipt-4) resolves it,
    else it fails `smsc_unconfirmed` at its deadline (sms_unconfirmed_until).

  KEYS[1] verification hash
  KEYS[2] unconfirmed-submit string (<prefix>:smsunc:<smsc>:<hmac of number>); only written for `unconfirmed`
  KEYS[3] parked-by-number string   (<prefix>:smsdlrnum:<smsc>:<hmac of number>): a receipt for this
          number that came while the submit was in flight (matchSmsReceipt-4) resolves it at once

  ARGV[1] state: retry | unconfirmed
  ARGV[2] request id
  ARGV[3] TTL of KEYS[2], seconds
  ARGV[4..] field, value pairs to set on the verification

  Returns 1 when marked, 0 when the state was no longer `submitting`, or (for
  `unconfirmed`) the message id of a receipt parked for this number: the
  caller records that id as accepted (mapSmsMessage-5) instead.
]]
if redis.call('HGET', KEYS[1], 'sms_state') ~= 'submitting' then return 0 end
if ARGV[1] == 'unconfirmed' then
  local parked = redis.call('GET', KEYS[3])
  if parked then return parked end
end
redis.call('HSET', KEYS[1], 'sms_state', ARGV[1])
for i = 4, #ARGV - 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[1] == 'unconfirmed' then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
end
return 1
