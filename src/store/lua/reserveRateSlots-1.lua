--[[
  Reserve n slots of a rate shared by every worker process: a trunk's CPS
  (sip.trunkLimits: cluster), an SMSC account's submit_sm per second
  (sms.smscs[].accountTps); engine/cluster-limits.ts, SharedRate. GCRA (the
  generic cell rate algorithm): the key holds the limit's theoretical arrival
  time (TAT, ms on Redis's clock); each slot moves it one interval
  (1000 / rate) on. A slot may leave `burst` ms before the TAT, so that an
  idle limit lets `rate` go at once, as a process's own token bucket of one
  second does.

  KEYS[1] the limit's TAT (string, ms; expires once the limit has been idle a second)
  ARGV[1] n, the slots wanted (>= 1)
  ARGV[2] interval, ms per slot (1000 / rate)
  ARGV[3] burst, ms (1000 - interval)

  Returns, as a string, the delay in ms (<= 0: now) of the first slot, on
  Redis's clock; slot i leaves `interval * i` ms after it. Workers add it to
  their own clock: only differences of Redis's clock are used.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local n = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local nextTat = tat + n * interval
redis.call('SET', KEYS[1], string.format('%.3f', nextTat), 'PX', math.ceil(nextTat - now) + 1000)
return string.format('%.3f', tat - burst - now)
