--[[
  Mark an SMS attempt `submitting` just before its submit_sm leaves, only
  while the attempt is still wanted: the request `sent` or `delivered`, not
  past its expires_at, and (a workflow) still at this step. From this mark on
  the attempt counts as "may have been sent" and is billed; before it, expiry,
  cancel and a step timeout refund it (expireVerification-7,
  cancelVerification-6, advanceWorkflow-8: sms_state unset, retry or refused).
  Checking and marking in one script closes the window in which the request
  was refunded after the job's claim and its SMS still went out. Run again,
  through the gateway's beforeSend, when the submit waited over 200 ms for its
  window slot and tokens; a 0 then withdraws it (markSmsWithdrawn-1).

  Marked, the request is also noted as in flight to its number (KEYS[2]) until
  its submit's outcome is known (mapSmsMessage-6, markSmsWaiting-4, or the
  worker on a withdrawn one): a receipt that comes meanwhile without a mapped
  id may be this submit's, whose submit_sm_resp is on its way, and is not
  matched by number to another, unconfirmed, submit (matchSmsReceipt-5).

  KEYS[1] verification hash
  KEYS[2] submits in flight to the number, zset (<prefix>:smsinflight:<hmac of number>): request id, scored by
          the time (ms) it stops counting (a worker that died with it in flight)

  ARGV[1] the workflow step of the attempt ("" = not a workflow request)
  ARGV[2] now (ms since epoch)
  ARGV[3] the attempt number (sms_attempts)
  ARGV[4] request id
  ARGV[5] how long it counts as in flight at most, seconds

  Returns 1 when marked (send the SMS), 0 when the attempt is no longer wanted (do not send).
]]
local v = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'wf_step')
if v[1] ~= 'sent' and v[1] ~= 'delivered' then return 0 end
if tonumber(ARGV[2]) >= (tonumber(v[2]) or 0) then return 0 end
if ARGV[1] ~= '' and v[3] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'sms_state', 'submitting', 'sms_attempts', ARGV[3])
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]) + tonumber(ARGV[5]) * 1000, ARGV[4])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
return 1
