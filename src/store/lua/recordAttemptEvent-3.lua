--[[
  Write an event to the events stream, filed in its request's webhook order
  set (writeEvent.lua), AND, if given, a delivery attempt's fields
  (recordAttemptFields-1: only while it is still the request's current
  attempt), in one step: a flash call's `delivered` event with its `rang_at`;
  with no fields, any event of a worker (EventPublisher.publish). The event is
  written first, so a re-run that finds the mark knows the event is in the
  stream.

  KEYS[1] verification hash
  KEYS[2] events stream
  KEYS[3] webhook order set of the request (Keys.webhookOrder)

  ARGV[1] this write's token (random, EventPublisher.write): the record keeps the token and stream id of its
          last event written (`evd`), so that the same script run again (ioredis sends a command again after a
          reconnect when its reply was lost: the script had run) returns that id instead of writing the event a
          second time under another id (a receiver would get it twice, with two event ids)
  ARGV[2] the workflow step the attempt belongs to ("" = not a workflow request)
  ARGV[3] n: how many of the following arguments are field, value pairs (even; 0 = none)
  ARGV[4 .. 3+n] field, value, field, value ...
  ARGV[4+n ..] XADD arguments after the key (EventPublisher.streamArgs)

  Returns {written, id}: written 1 when the fields were written, 0 when there were none, the record is
  gone or it has moved on to another step (the event is written either way, as a separate publish would
  have been); id the event's stream id.
]]
--- @include "writeEvent"
local n = tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'account_id', 'wf_step', 'whq_until', 'evd')
local token = ARGV[1]
local id
if v[4] and string.sub(v[4], 1, #token + 1) == token .. ' ' then
  id = string.sub(v[4], #token + 2)
else
  id = xaddEvent(KEYS[2], ARGV, 4 + n, v[3])
  recordWebhookOrder(KEYS[3], id, v[3])
  -- Only on a record that exists: never a hash without its TTL.
  if v[1] then redis.call('HSET', KEYS[1], 'evd', token .. ' ' .. id) end
end
if n == 0 or not v[1] then return {0, id} end
if ARGV[2] ~= '' and v[2] ~= ARGV[2] then return {0, id} end
for i = 4, 3 + n - 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return {1, id}
