--[[
  Write fields of one delivery attempt (a call's outcome, final SIP status,
  rang_at / answered_at) only while that attempt is still the request's
  current one. A call of workflow step n that ends after the request moved
  on to step n+1 (its step timed out) must not overwrite step n+1's fields:
  a re-run job of step n+1 would read them as its own (claimDelivery), and
  operators would see the wrong call's outcome.

  KEYS[1] verification hash

  ARGV[1] the workflow step the attempt belongs to ("" = not a workflow request)
  ARGV[2..] field, value, field, value ...

  Returns 1 when written, 0 when the record is gone or has moved on to another step.
]]
local v = redis.call('HMGET', KEYS[1], 'account_id', 'wf_step', 'status')
if not v[1] then return 0 end
if ARGV[1] ~= '' and v[2] ~= ARGV[1] then return 0 end
-- An ended request no longer holds its sealed code (deleted when it ended): a new code is not written back.
local ended = v[3] == 'verified' or v[3] == 'expired' or v[3] == 'failed' or v[3] == 'canceled'
for i = 2, #ARGV - 1, 2 do
  if not (ended and ARGV[i] == 'code_enc') then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
