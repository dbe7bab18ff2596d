--[[
  Write a delivery attempt's event to the events stream AND its fields
  (recordAttemptFields-1: only while it is still the request's current
  attempt) in one step: a flash call's `delivered` event with its `rang_at`.
  Before, they were two round trips, the mark written after the event; here
  the event is written first in the same script, so a re-run that finds the
  mark still knows the event is in the stream.

  KEYS[1] verification hash
  KEYS[2] events stream

  ARGV[1] the workflow step the attempt belongs to ("" = not a workflow request)
  ARGV[2] n: how many of the following arguments are field, value pairs (even)
  ARGV[3 .. 2+n] field, value, field, value ...
  ARGV[3+n ..] XADD arguments after the key (EventPublisher.streamArgs)

  Returns 1 when the fields were written, 0 when the record is gone or has moved on to
  another step (the event is written either way, as a separate publish would have been).
]]
local n = tonumber(ARGV[2])
redis.call('XADD', KEYS[2], unpack(ARGV, 3 + n))
local v = redis.call('HMGET', KEYS[1], 'account_id', 'wf_step')
if not v[1] then return 0 end
if ARGV[1] ~= '' and v[2] ~= ARGV[1] then return 0 end
for i = 3, 2 + n - 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
