--[[
  Take back a resend whose delivery job could not be queued (resend.ts): the
  request is put back as it was before resendVerification-4 (the previous
  send's fields, its code, its `send_cost`, from `resend_undo`), and the
  resend's price goes back to the balance, the record's `cost` and the usage
  of the day it was counted in, and its count out of that day's conversion
  `sent` (resendVerification-4 counted it there, in the same step as the
  charge). So a cancel afterwards sees the previous send
  as dialled (no second refund), and the code the user already has still
  verifies.

  If the resend's job did get queued after all (the add timed out but
  landed) and a worker has claimed it already (`dial_started` set again), the
  resend stands: nothing is taken back.

  KEYS[1] account hash
  KEYS[2] verification hash
  KEYS[3] usage hash of the account for the resend's day
  KEYS[4] conversion hash of the resend's day

  ARGV[1] the resend's send number (`sends` after it)
  ARGV[2] the resend's price, micro-units
  ARGV[3] method (the usage field prefix)

  Returns 'undone', 'claimed' (the resend stands) or 'gone' (no such resend to undo: a later one, or no record).
]]
local v = redis.call('HMGET', KEYS[2], 'sends', 'resend_undo', 'dial_started', 'country', 'test_number')
if not v[1] or not v[2] or tonumber(v[1]) ~= tonumber(ARGV[1]) then return 'gone' end
if v[3] then return 'claimed' end
local undo = cjson.decode(v[2])
local fields = {'dial_started', 'rang_at', 'answered_at', 'outcome', 'final_sip_status', 'sms_state', 'sms_attempts',
  'sms_unconfirmed_until', 'sms_nobind_since', 'sms_waits', 'refunded', 'code_mac', 'code_enc', 'send_cost',
  'sms_superseded_ids', 'last_send_at', 'sends'}
for _, name in ipairs(fields) do
  if undo[name] then redis.call('HSET', KEYS[2], name, undo[name]) else redis.call('HDEL', KEYS[2], name) end
end
local cost = tonumber(ARGV[2])
redis.call('HDEL', KEYS[2], 'resend_undo')
if cost > 0 then
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'balance', cost) end
  redis.call('HINCRBY', KEYS[2], 'cost', -cost)
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HINCRBY', KEYS[3], ARGV[3] .. ':count', -1)
  if cost > 0 then redis.call('HINCRBY', KEYS[3], ARGV[3] .. ':cost', -cost) end
end
if v[4] and not v[5] then redis.call('HINCRBY', KEYS[4], 'country:' .. v[4] .. ':' .. ARGV[3] .. ':sent', -1) end
return 'undone'
