--[[
  Change one worker's share of a count capped over every worker process
  (takeSharedCount-3.lua: a trunk's channels, an SMSC account's binds) by
  delta: negative when its calls have ended (binds closed), positive when a
  stopping worker lets its waiting calls go over the cap. A share that
  reaches 0 is removed. Renews the worker's lease.

  KEYS[1] hash: worker -> its share
  KEYS[2] sorted set: worker -> when its lease lapses (ms, Redis's clock)
  ARGV[1] worker id
  ARGV[2] delta
  ARGV[3] lease, ms

  Returns the worker's count after it.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
local v = redis.call('HINCRBY', KEYS[1], ARGV[1], tonumber(ARGV[2]))
if v <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('ZADD', KEYS[2], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease * 2)
redis.call('PEXPIRE', KEYS[2], lease * 2)
return math.max(v, 0)
