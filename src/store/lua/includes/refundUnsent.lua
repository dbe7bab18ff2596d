--[[
  Refunds the current attempt (or send) of a request that is ending, when
  nothing of it left: the rule of expireVerification-7, shared with
  recordCheck-6 (the last wrong code ends the request the same way). Needs
  refundCharge included before it.

  "Nothing left" (the same rule in cancelVerification-6 and advanceWorkflow-8):
  no `dial_started` (no job claimed the attempt), or an SMS whose `sms_state`
  says no submit_sm can have been taken: unset (claimed, not submitted yet;
  `submitting` is written before submit_sm leaves), `retry` (refused for now,
  or no bind) or `refused` (refused late). See engine/sms-processor.ts. Once
  per attempt (HSETNX `refunded`, or `att<n>_refunded` for a workflow step).
  Its delivery job, still waiting (no SMPP bind, a throttle back-off, a
  backlog), then finds the request past `sent` and drops it.

  exceptTestNumber: true to refund nothing for a test number (never dialled:
  verified, it has nothing left behind to give back).
  Returns the amount refunded (micro-units; 0 when nothing was).
]]
local function refundUnsent(recordKey, accountKey, usageKey, conversionKey, exceptTestNumber)
  local f = redis.call('HMGET', recordKey, 'method', 'dial_started', 'sms_state', 'wf_step', 'wf_steps', 'send_cost',
    'cost', 'country', 'test_number')
  local r = { method = f[1], dial_started = f[2], sms_state = f[3], wf_step = f[4], wf_steps = f[5],
    send_cost = f[6], cost = f[7], country = f[8], test_number = f[9] }
  if exceptTestNumber and r.test_number then return 0 end
  local sms = r.sms_state
  local nothingSent = not r.dial_started or (r.method == 'sms' and (not sms or sms == 'retry' or sms == 'refused'))
  if not nothingSent then return 0 end
  local refund, method, refunded = 0, r.method, false
  if r.wf_step and r.wf_steps then
    local p = 'att' .. r.wf_step .. '_'
    if redis.call('HSETNX', recordKey, p .. 'refunded', '1') == 1 then
      refunded = true
      local a = redis.call('HMGET', recordKey, p .. 'cost', p .. 'method')
      refund, method = tonumber(a[1] or '0'), a[2] or method
      redis.call('HSET', recordKey, p .. 'cost', 0)
    end
  elseif redis.call('HSETNX', recordKey, 'refunded', '1') == 1 then
    refunded = true
    -- A resend not sent yet: only its own price (send_cost); the earlier sends went out.
    refund = tonumber(r.send_cost or r.cost or '0')
  end
  -- A test number's send was never counted in the conversion hash (it never reaches the network): no country.
  if refunded then refundCharge(accountKey, recordKey, usageKey, conversionKey, method, refund, not r.test_number and r.country or nil) end
  return refund
end
