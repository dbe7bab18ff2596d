--[[
  Count one failed API authentication, atomically, per client address and per
  API key, in fixed windows that start at the first failure.

  KEYS[1] failure counter of the client address
  KEYS[2] failure counter of the API key ("" key name skipped when unknown: pass the address key twice)

  ARGV[1] window (seconds)

  Returns {address_failures, key_failures, address_window_ttl_seconds}.
]]
local function bump(key)
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIRE', key, tonumber(ARGV[1])) end
  return n
end
local a = bump(KEYS[1])
local k = a
if KEYS[2] ~= KEYS[1] then k = bump(KEYS[2]) end
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then ttl = tonumber(ARGV[1]) end
return {a, k, ttl}
