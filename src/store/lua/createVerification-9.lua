--[[
  Create a verification and pay for it, atomically, and count it: in the
  account's usage of today and in the per-country conversion `sent` of today
  (countSent.lua; not a test number's, which never reaches the network). The
  count goes with the charge, not with the queueing of the delivery job: a
  request whose api process dies before queueing it is queued later by the
  enqueue reconciler and must be counted once all the same, and its refund
  (an expiry, a cancel, a refunded failure: refundCharge.lua) takes it out of
  this same day.

  KEYS[1] account hash
  KEYS[2] verification hash (must not exist)
  KEYS[3] events stream
  KEYS[4] usage hash of the account for today
  KEYS[5] expiries sorted set (request id by expires_at), read by the expiry sweeper
  KEYS[6] unqueued sorted set (request id by created_at): the intent to queue, filed
          with the record, atomically; the api removes it once the job is queued, and
          the enqueue reconciler queues what stays there too long (api process died)
  KEYS[7] webhook order set of the request (Keys.webhookOrder): created here with the
          `sent` event and its TTL when the account has a webhook URL now; later events
          are filed in it while the record's `whq_until` (ARGV[17]) says so
          (writeEvent.lua). An account without one gets neither the set nor
          `whq_until`: none of its events is filed (no webhook would wait on them), so
          requests of accounts without webhooks pay no order-set commands or memory
  KEYS[8] conversion hash of today (Keys.conversion): `country:<ARGV[12]>:<ARGV[3]>:sent`
  KEYS[9] the request's Idempotency-Key record (Keys.idempotency); not touched when
          ARGV[19] is "" (then any key of the slot, e.g. KEYS[2])

  ARGV[1]  request_id
  ARGV[2]  account_id
  ARGV[3]  method
  ARGV[4]  cost in micro-units of the account's currency
  ARGV[5]  now (ms since epoch)
  ARGV[6]  expires_at (ms since epoch)
  ARGV[7]  record TTL (seconds)
  ARGV[8]  phone_enc (sealed E.164)
  ARGV[9]  code_mac (HMAC of the code)
  ARGV[10] code_enc (sealed code)
  ARGV[11] code_length
  ARGV[12] country (ISO alpha-2)
  ARGV[13] events stream MAXLEN (approximate)
  ARGV[14] usage TTL (seconds)
  ARGV[15] more record fields "k1\nv1\nk2\nv2..." ("" = none): a workflow's wf, wf_step,
           wf_steps and att0_* fields, the voice/SMS locale, test_number. Written here, in
           the same script as the record, so that an api process dying right after it can
           never leave a workflow request that looks like a one-method one (the enqueue
           reconciler queues what it finds). A `test_number` field: not counted in KEYS[8]
  ARGV[16] TTL of the webhook order set (seconds)
  ARGV[17] whq_until: until when (ms since epoch) events of the request are filed in it
  ARGV[18] TTL of the conversion hash (ms), set when this count creates its field
  ARGV[19] the Idempotency-Key record of the 201 ("" = the request has no key): stored
           over the api's claim with the request it answers, in the same step, so that
           an api process dying before it stores the response itself leaves a retry
           the 201 to replay, never a second create (idempotency.ts)
  ARGV[20] TTL of that record (seconds)

  Returns {"ok", balance_after} or {"err", code}:
    account_missing | account_pending | account_suspended | insufficient_balance | exists
]]
--- @include "countSent"
--- @include "writeEvent"
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'err', 'account_missing'} end
if status == 'pending' then return {'err', 'account_pending'} end
if status ~= 'active' then return {'err', 'account_suspended'} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'err', 'exists'} end

local cost = tonumber(ARGV[4])
local balance = tonumber(redis.call('HGET', KEYS[1], 'balance') or '0')
if balance < cost then return {'err', 'insufficient_balance'} end
-- A free request (test number, price 0) debits nothing: Lua's -0 would be refused by HINCRBY.
if cost > 0 then balance = redis.call('HINCRBY', KEYS[1], 'balance', -cost) end

redis.call('HSET', KEYS[2],
  'request_id', ARGV[1], 'account_id', ARGV[2], 'method', ARGV[3],
  'status', 'sent', 'cost', ARGV[4], 'created_at', ARGV[5], 'expires_at', ARGV[6],
  'phone_enc', ARGV[8], 'code_mac', ARGV[9], 'code_enc', ARGV[10],
  'code_length', ARGV[11], 'country', ARGV[12], 'attempts', '0', 'at_sent', ARGV[5])
local filed = redis.call('HEXISTS', KEYS[1], 'webhook_url') == 1
if filed then redis.call('HSET', KEYS[2], 'whq_until', ARGV[17]) end
local testNumber = false
if ARGV[15] and ARGV[15] ~= '' then
  local parts = {}
  for line in string.gmatch(ARGV[15], '([^\n]*)\n?') do table.insert(parts, line) end
  for i = 1, #parts - 1, 2 do
    if parts[i] ~= '' then redis.call('HSET', KEYS[2], parts[i], parts[i + 1]) end
    if parts[i] == 'test_number' then testNumber = true end
  end
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[7]))
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[1])
redis.call('ZADD', KEYS[6], ARGV[5], ARGV[1])

redis.call('HINCRBY', KEYS[4], ARGV[3] .. ':count', 1)
redis.call('HINCRBY', KEYS[4], ARGV[3] .. ':cost', cost)
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[14]))
if not testNumber then countSent(KEYS[8], ARGV[18], ARGV[12], ARGV[3]) end

writeEvent(KEYS[3], ARGV[13], KEYS[7], filed and ARGV[17] or nil, 'sent', ARGV[1], ARGV[2], ARGV[3], ARGV[5], '{}')
if filed then redis.call('EXPIRE', KEYS[7], tonumber(ARGV[16])) end
if ARGV[19] ~= '' then redis.call('SET', KEYS[9], ARGV[19], 'EX', tonumber(ARGV[20])) end
return {'ok', balance}
