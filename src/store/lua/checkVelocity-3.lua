--[[
  Sliding-window velocity limits of one send, checked and recorded atomically:
  the send is recorded in every window only when every window has room, so a
  refused send counts nowhere (no partial counting).

  KEYS[1] sorted set: sends to this destination number (member = send id, score = ms)
  KEYS[2] sorted set: sends to this number prefix
  KEYS[3] sorted set: sends for this client IP

  ARGV[1] now (ms since epoch)
  ARGV[2] send id (unique member)
  ARGV[3], ARGV[4] limit and window (ms) of KEYS[1]; limit 0 = window not applied
  ARGV[5], ARGV[6] limit and window (ms) of KEYS[2]
  ARGV[7], ARGV[8] limit and window (ms) of KEYS[3]

  Returns {"ok"} or {"limited", index of the full window (1..3), ms until a slot frees}.
]]
local now = tonumber(ARGV[1])
for i = 1, 3 do
  local limit = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  if limit > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
    local n = redis.call('ZCARD', KEYS[i])
    if n >= limit then
      -- The (n - limit + 1)th oldest send must leave the window before one more fits.
      local oldest = redis.call('ZRANGE', KEYS[i], n - limit, n - limit, 'WITHSCORES')
      local retry = window
      if oldest[2] then retry = tonumber(oldest[2]) + window - now end
      if retry < 1 then retry = 1 end
      return {'limited', i, retry}
    end
  end
end
for i = 1, 3 do
  local limit = tonumber(ARGV[1 + 2 * i])
  if limit > 0 then
    redis.call('ZADD', KEYS[i], now, ARGV[2])
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2 + 2 * i]))
  end
end
return {'ok'}
