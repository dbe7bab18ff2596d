--[[
  Take up to n of a count capped over every worker process, for one worker
  (engine/cluster-limits.ts SharedCount): a trunk's channels
  (sip.trunks[].maxCalls, sip.trunkLimits: cluster), an SMSC account's binds
  (sms.smscs[].maxBinds). Each worker's share in use is one field of a hash;
  each worker holds a lease, renewed by every call of this script (n = 0 is
  the heartbeat). A worker whose lease lapsed (it died, or stalled longer
  than the lease) no longer counts: its field is removed, and its share is
  free for the others.

  KEYS[1] hash: worker -> its share (channels, binds)
  KEYS[2] sorted set: worker -> when its lease lapses (ms, Redis's clock)
  ARGV[1] worker id
  ARGV[2] n, wanted (0: only renew the lease and read the total)
  ARGV[3] the cap over every worker
  ARGV[4] lease, ms
  ARGV[5] this worker's share by its own count: written back when its
          field is missing (its lease had lapsed), so that it counts again

  Returns { granted, total in use after it }.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local worker = ARGV[1]
local n = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local held = tonumber(ARGV[5])
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, w in ipairs(lapsed) do
  if w ~= worker then redis.call('HDEL', KEYS[1], w) end
end
if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
redis.call('ZADD', KEYS[2], now + lease, worker)
if held > 0 and redis.call('HEXISTS', KEYS[1], worker) == 0 then redis.call('HSET', KEYS[1], worker, held) end
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
local granted = math.max(0, math.min(n, max - total))
if granted > 0 then redis.call('HINCRBY', KEYS[1], worker, granted) end
redis.call('PEXPIRE', KEYS[1], lease * 2)
redis.call('PEXPIRE', KEYS[2], lease * 2)
return { granted, total + granted }
