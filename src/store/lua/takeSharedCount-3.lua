--[[
  Take up to n of a count capped over every worker process, for one worker
  (engine/cluster-limits.ts SharedCount): a trunk's channels
  (sip.trunks[].maxCalls, sip.trunkLimits: cluster), an SMSC account's binds
  (sms.smscs[].maxBinds). Each worker's share in use is one field of a hash;
  each worker holds a lease, renewed by every call of this script (n = 0 is
  the heartbeat). A worker whose lease lapsed (it died, or stalled longer
  than the lease) no longer counts: its field is removed, and its share is
  free for the others.

  Workers that asked in vain are noted (KEYS[3], with when): each answer says
  how many others asked in vain lately, so that a worker holding more than its
  fair share gives a freed channel back rather than to its own next call
  (engine/trunk-pacer.ts). A free one is never refused here: the notes only
  steer what the holders give back.

  KEYS[1] hash: worker -> its share (channels, binds)
  KEYS[2] sorted set: worker -> when its lease lapses (ms, Redis's clock)
  KEYS[3] sorted set: worker -> when it last got fewer than it asked for (ms)
  ARGV[1] worker id
  ARGV[2] n, wanted (0: only renew the lease and read the total)
  ARGV[3] the cap over every worker
  ARGV[4] lease, ms
  ARGV[5] this worker's share by its own count: written back when its
          field is missing (its lease had lapsed), so that it counts again
  ARGV[6] how long a note of asking in vain counts (ms): about four of the
          waiting workers' asks

  Returns { granted, total in use after it, other workers that asked in vain
  lately }.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local worker = ARGV[1]
local n = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local held = tonumber(ARGV[5])
local fresh = tonumber(ARGV[6])
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
-- This worker's note: renewed while it asks in vain, gone once it got all it asked for (a heartbeat, n = 0,
-- leaves it as it is).
if n > 0 then
  if granted < n then
    redis.call('ZADD', KEYS[3], now, worker)
  else
    redis.call('ZREM', KEYS[3], worker)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - fresh)
local others = redis.call('ZCARD', KEYS[3])
if redis.call('ZSCORE', KEYS[3], worker) then others = others - 1 end
redis.call('PEXPIRE', KEYS[1], lease * 2)
redis.call('PEXPIRE', KEYS[2], lease * 2)
redis.call('PEXPIRE', KEYS[3], lease * 2)
return { granted, total + granted, others }
