--[[
  Claim a verification for one delivery attempt (engine/delivery-claim.ts),
  in one round trip: read the record's fields and, when this job may deliver
  now, record the dial (HSETNX dial_started) before anything leaves, so that a
  job re-run after a crash never calls or texts twice for one attempt.

  A job belongs to one send of its request (resend.ts, sendOfJob: job id
  <request_id> is send 1, <request_id>-r<n> send n). A job whose send is not
  the record's current one (`sends`, absent = 1) claims nothing and changes
  nothing: its resend was taken back by undoResend-4 after its add timed out
  but landed, or a later resend has replaced it (a stalled job run again). The
  record then holds another send's state (the previous send, dialled and
  billed once): whatever the job did with it (dial, a refunded failure, an
  `interrupted` one) would be about a send it is not for.

  Likewise a job belongs to one step of a workflow (workflow.ts, stepOfJob:
  <request_id> is step 0, <request_id>-s<n> step n): one whose step is not
  the record's `wf_step` (absent = 0) claims nothing (`other_step`). A step-0
  job run again after the workflow moved on (it stalled, or was added by hand)
  would otherwise take a later step of the same method, e.g. the second SMS
  of [sms, voice, sms].

  KEYS[1] verification hash
  ARGV[1] the job's method
  ARGV[2] now, ms since epoch (also the value of dial_started)
  ARGV[3] the job's send ("" = not bound to a send: not checked)
  ARGV[4] the job's workflow step ("" = not bound to a step: not checked)
  ARGV[5..] fields whose values are returned, in this order

  Returns { verdict, values }, verdict one of:
    'gone'          no record (or one without account or phone, or a live one without its code)
    'other_method'  the record is of another method
    'other_send'    the record is at another send than the job's (nothing claimed)
    'other_step'    the record is at another workflow step than the job's (nothing claimed)
    'past_sent'     past `sent`, and not a resend re-opened by resendVerification-5
    'expired'       expires_at has passed before this attempt started (not claimed)
    'expired_started' expires_at has passed and an earlier run already started this attempt
                    (it may have reached the handset: not refunded; the expiry sweeper ends it)
    'claimed'       dial_started was set now
    'started'       dial_started was already set (an earlier run of this attempt)
]]
local values = redis.call('HMGET', KEYS[1], unpack(ARGV, 5))
local h = redis.call('HMGET', KEYS[1], 'status', 'account_id', 'phone_enc', 'code_enc', 'expires_at', 'method', 'sends', 'wf_step')
local status = h[1]
if not status or not h[2] or not h[3] then return { 'gone', values } end
-- The step first: a stale job of an earlier step is of that step's method, not a job queued for the wrong method.
if ARGV[4] ~= '' and tonumber(ARGV[4]) ~= tonumber(h[8] or '0') then return { 'other_step', values } end
if h[6] ~= ARGV[1] then return { 'other_method', values } end
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= tonumber(h[7] or '1') then return { 'other_send', values } end
-- A resend (POST /v1/verify with resend: true) re-opens the claim of a live request by clearing dial_started.
local resend = status == 'delivered' and redis.call('HEXISTS', KEYS[1], 'dial_started') == 0
if status ~= 'sent' and not resend then return { 'past_sent', values } end
-- A live record always holds its sealed code (a final one no longer does: it is deleted when the request ends).
if not h[4] then return { 'gone', values } end
if tonumber(ARGV[2]) >= (tonumber(h[5]) or 0) then
  if redis.call('HEXISTS', KEYS[1], 'dial_started') == 1 then return { 'expired_started', values } end
  return { 'expired', values }
end
if redis.call('HSETNX', KEYS[1], 'dial_started', ARGV[2]) == 1 then return { 'claimed', values } end
return { 'started', values }
