--[[
  Resend a live verification on the same request: pay for one more send and
  re-open the delivery claim (`dial_started`) so exactly one new delivery job
  may dial again. The caller enqueues that job (job id <request_id>-r<sends>).

  A resend is refused while the previous send has not finished: before a
  worker claimed it (still queued), or while its call is still in progress
  (flash/voice: no `outcome` yet; SMS: not yet accepted by the SMSC). So at
  most one delivery job of a request can ever claim it, and one call's outcome
  fields are never mixed with another's. A call that ended without reaching
  the phone (no `rang_at` for a flash call, unless it was answered; no
  `answered_at` for a voice call) is refused as `not_live`: its failure event
  is on its way and ends the request, and a resend paid for now would be
  dropped by the worker once it has (a request is not live after `failed`).

  The request's `cost` is the sum of its sends (GET /v1/verify/{id} shows it);
  `send_cost` is the price of the latest send, the amount a refund of that send
  gives back. A workflow request is never resent: it moves on to its next
  step by itself, and a resend would be a delivery outside its steps.

  The send is counted with its charge: in the usage of today and in the
  per-country conversion `sent` of today (countSent.lua; a test number's
  never), so that a refund of it (refundCharge.lua) or undoResend-4 finds the
  count it takes back, however the api process fares after this script.

  KEYS[1] account hash
  KEYS[2] verification hash
  KEYS[3] usage hash of the account for today
  KEYS[4] conversion hash of today (Keys.conversion)
  KEYS[5] the request's Idempotency-Key record (Keys.idempotency); not touched when ARGV[9]
          is "" (then any key of the slot, e.g. KEYS[2])

  ARGV[1] account_id
  ARGV[2] now (ms since epoch)
  ARGV[3] cost of this send, micro-units of the account's currency
  ARGV[4] max sends per request
  ARGV[5] new code_mac ("" = keep the code: voice and SMS repeat the same code)
  ARGV[6] new code_enc
  ARGV[7] usage TTL (seconds)
  ARGV[8] TTL of the conversion hash (ms), set when this count creates its field
  ARGV[9] the Idempotency-Key record of the 200 ("" = none), made by the api for the send it
          expects this resend to be (ARGV[11]): stored with the resend, in the same step, as
          createVerification-9 stores a create's 201, when the send is that one (another
          resend got in between: the api stores its own answer, as without a key)
  ARGV[10] TTL of that record (seconds)
  ARGV[11] the send (`sends` after this resend) the record is for

  Returns {"ok", sends, balance_after} or {"err", code}:
    account_missing | account_pending | account_suspended | insufficient_balance |
    not_found | not_live | workflow | queued | in_progress | max_sends
]]
--- @include "resendUndo"
--- @include "countSent"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'err', 'account_missing'} end
if status == 'pending' then return {'err', 'account_pending'} end
if status ~= 'active' then return {'err', 'account_suspended'} end

local v = redis.call('HMGET', KEYS[2], 'account_id', 'status', 'expires_at', 'method', 'dial_started', 'outcome', 'sms_state', 'sends', 'wf',
  'rang_at', 'answered_at', 'country', 'test_number')
if not v[1] or v[1] ~= ARGV[1] then return {'err', 'not_found'} end
local now = tonumber(ARGV[2])
if (v[2] ~= 'sent' and v[2] ~= 'delivered') or now >= tonumber(v[3]) then return {'err', 'not_live'} end
if v[9] then return {'err', 'workflow'} end
if not v[5] then return {'err', 'queued'} end
if v[4] == 'sms' then
  if v[7] ~= 'accepted' and v[2] ~= 'delivered' then return {'err', 'in_progress'} end
elseif not v[6] then
  return {'err', 'in_progress'}
elseif v[4] == 'flash_call' and not v[10] and v[6] ~= 'answered' then
  return {'err', 'not_live'}
elseif v[4] == 'voice' and not v[11] then
  return {'err', 'not_live'}
end
local sends = tonumber(v[8] or '1')
if sends >= tonumber(ARGV[4]) then return {'err', 'max_sends'} end

local cost = tonumber(ARGV[3])
local balance = tonumber(redis.call('HGET', KEYS[1], 'balance') or '0')
if balance < cost then return {'err', 'insufficient_balance'} end
if cost > 0 then balance = redis.call('HINCRBY', KEYS[1], 'balance', -cost) end

-- What this resend replaces, for undoResend-4 should its job not be queued: the previous send's fields as they were.
local was = redis.call('HMGET', KEYS[2], unpack(RESEND_REPLACED))
local undo = {}
for i, name in ipairs(RESEND_REPLACED) do
  if was[i] then undo[name] = was[i] end
end
redis.call('HSET', KEYS[2], 'resend_undo', cjson.encode(undo))

sends = sends + 1
redis.call('HSET', KEYS[2], 'sends', sends, 'last_send_at', ARGV[2], 'send_cost', cost)
if ARGV[9] and ARGV[9] ~= '' and tonumber(ARGV[11]) == sends then redis.call('SET', KEYS[5], ARGV[9], 'EX', tonumber(ARGV[10])) end
redis.call('HINCRBY', KEYS[2], 'cost', cost)
-- An SMS sent again: the messages sent so far are superseded; a failure receipt for one of them arriving now
-- must not fail the request while the new message is on its way (settleSms-4). A DELIVRD for any still counts.
if v[4] == 'sms' then
  local ids = redis.call('HGET', KEYS[2], 'sms_message_ids')
  if ids then redis.call('HSET', KEYS[2], 'sms_superseded_ids', ids) end
end
redis.call('HDEL', KEYS[2], 'dial_started', 'rang_at', 'answered_at', 'outcome', 'final_sip_status', 'sms_state', 'sms_attempts',
  'sms_unconfirmed_until', 'sms_nobind_since', 'sms_waits', 'refunded')
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'code_mac', ARGV[5], 'code_enc', ARGV[6]) end

redis.call('HINCRBY', KEYS[3], v[4] .. ':count', 1)
redis.call('HINCRBY', KEYS[3], v[4] .. ':cost', cost)
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[7]))
if v[12] and not v[13] then countSent(KEYS[4], ARGV[8], v[12], v[4]) end
return {'ok', sends, balance}
