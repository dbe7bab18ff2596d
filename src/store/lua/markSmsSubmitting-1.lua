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

  KEYS[1] verification hash

  ARGV[1] the workflow step of the attempt ("" = not a workflow request)
  ARGV[2] now (ms since epoch)
  ARGV[3] the attempt number (sms_attempts)

  Returns 1 when marked (send the SMS), 0 when the attempt is no longer wanted (do not send).
]]
local v = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'wf_step')
if v[1] ~= 'sent' and v[1] ~= 'delivered' then return 0 end
if tonumber(ARGV[2]) >= (tonumber(v[2]) or 0) then return 0 end
if ARGV[1] ~= '' and v[3] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'sms_state', 'submitting', 'sms_attempts', ARGV[3])
return 1
