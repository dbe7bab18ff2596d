--[[
  Fixed one-second window request counter.

  KEYS[1] counter key of this API key and second
  ARGV[1] window TTL (ms)

  Returns the count including this request.
]]
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1])) end
return n
