--[[
  One webhook delivery of an account failed (events/webhook-breaker.ts): count
  it among the account's failures in a row, and open the breaker when they
  reach the threshold. A failed probe opens it again for twice its last
  cool-off (at most the maximum). A delivery that started before the breaker
  opened and fails after changes nothing more. A success deletes the hash.

  KEYS[1] breaker hash (Keys.webhookBreaker)
  KEYS[2] set of the accounts whose breaker is open (Keys.webhookBreakersOpen)

  ARGV[1] account id
  ARGV[2] now, ms since epoch
  ARGV[3] failures in a row that open the breaker
  ARGV[4] first cool-off, ms
  ARGV[5] longest cool-off, ms
  ARGV[6] 1 when the failed delivery was the probe
  ARGV[7] seconds a closed breaker's count of failures is kept after the last one

  Returns { transition, open_until, failures, cool_off_ms }, transition one of
  'opened', 'reopened' or '' (no change).
]]
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local now = tonumber(ARGV[2])
local openUntil = tonumber(redis.call('HGET', KEYS[1], 'open_until'))
if openUntil then
  if ARGV[6] ~= '1' then return { '', openUntil, failures, 0 } end
  local cool = math.min(2 * (tonumber(redis.call('HGET', KEYS[1], 'cool_off_ms')) or tonumber(ARGV[4])), tonumber(ARGV[5]))
  redis.call('HSET', KEYS[1], 'open_until', now + cool, 'cool_off_ms', cool)
  redis.call('HDEL', KEYS[1], 'probe_until')
  return { 'reopened', now + cool, failures, cool }
end
if failures >= tonumber(ARGV[3]) then
  local cool = tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'open_until', now + cool, 'cool_off_ms', cool)
  -- Open until a delivery succeeds (or the URL changes): never forgotten while events wait behind it.
  redis.call('PERSIST', KEYS[1])
  redis.call('SADD', KEYS[2], ARGV[1])
  return { 'opened', now + cool, failures, cool }
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[7]))
return { '', 0, failures, 0 }
