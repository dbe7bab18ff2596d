--[[
  An SMS attempt marked `submitting` (markSmsSubmitting-2) that was not sent
  after all: its request ended, or its workflow step moved on, while the
  submit waited for a window slot or a TPS token (engine/sms-processor.ts,
  the gateway's beforeSend). Who refunds it depends on what ran first:
  - the request is still live (past its expires_at, the expiry sweeper not
    yet run): marked `retry` (nothing sent), so that the sweeper's expiry
    refunds it (expireVerification-7, refundUnsent.lua);
  - it has ended (expired, canceled, verified, failed) or its step moved on:
    that ending found it `submitting` ("may have left") and billed it; the
    caller publishes a refunded failure, which gives the charge back once
    (applyEvent-4 / applyStepEvent-4, whatever the status).

  KEYS[1] verification hash

  ARGV[1] the workflow step of the attempt ("" = not a workflow request)

  Returns 'live' (left to the sweeper) or 'ended' (the caller refunds).
]]
local v = redis.call('HMGET', KEYS[1], 'status', 'wf_step', 'sms_state')
if not v[1] then return 'ended' end
local live = (v[1] == 'sent' or v[1] == 'delivered') and (ARGV[1] == '' or v[2] == ARGV[1])
if not live then return 'ended' end
if v[3] == 'submitting' then redis.call('HSET', KEYS[1], 'sms_state', 'retry') end
return 'live'
