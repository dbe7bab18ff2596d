--[[
  Take back a resend whose delivery job could not be queued (resend.ts): the
  request is put back as it was before resendVerification-5 (the previous
  send's fields, its code, its `send_cost`, from `resend_undo`), and the
  resend's price goes back to the balance, the record's `cost` and the usage
  of the day it was counted in, and its count out of that day's conversion
  `sent` (resendVerification-5 counted it there, in the same step as the
  charge), through refundCharge like every other refund. So a cancel
  afterwards sees the previous send as dialled (no second refund), and the
  code the user already has still verifies.

  The resend is given back once. The request may have ended while the job's
  add waited for Redis: expired (expireVerification-7) or canceled
  (cancelVerification-6). Either found the resend undialled and refunded it
  already, under the send's guard `refunded` (resendVerification-5 cleared it
  for the resend, and only a refund of the resend sets it again). Then the
  request is still put back (its record shows the sends that went out), and
  nothing more is given back: 'ended'.

  If the resend's job did get queued after all (the add timed out but
  landed) and a worker has claimed it already (`dial_started` set again, to
  the claim's time), the resend stands: nothing is taken back. A cancel's
  mark (`dial_started` "canceled") is no worker's claim.

  KEYS[1] account hash
  KEYS[2] verification hash
  KEYS[3] usage hash of the account for the resend's day
  KEYS[4] conversion hash of the resend's day

  ARGV[1] the resend's send number (`sends` after it)
  ARGV[2] the resend's price, micro-units
  ARGV[3] method (the usage field prefix)

  Returns 'undone', 'ended' (put back; refunded already by the expiry or the
  cancel), 'claimed' (the resend stands) or 'gone' (no such resend to undo: a
  later one, or no record).
]]
--- @include "resendUndo"
--- @include "refundCharge"
local v = redis.call('HMGET', KEYS[2], 'sends', 'resend_undo', 'dial_started', 'country', 'test_number', 'refunded')
if not v[1] or not v[2] or tonumber(v[1]) ~= tonumber(ARGV[1]) then return 'gone' end
if v[3] and v[3] ~= 'canceled' then return 'claimed' end
local undo = cjson.decode(v[2])
putBackSend(KEYS[2], undo, false)
redis.call('HDEL', KEYS[2], 'resend_undo')
if v[6] then return 'ended' end
-- A test number's send was never counted in the conversion hash: no country.
refundCharge(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[3], tonumber(ARGV[2]), not v[5] and v[4] or nil)
return 'undone'
