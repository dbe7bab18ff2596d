--[[
  The two Redis checks of an API request whose credentials this process knows
  already (its auth cache), in one round trip instead of two: the client
  address's lock-out (AuthGuard.checkAddress), then the API key's one-second
  window (rateLimit-1), which a locked-out request does not count in.

  KEYS[1] string: failed authentications of the client address (recordAuthFailure-2's KEYS[1])
  KEYS[2] string: the API key's counter of this second (rateLimit-1's KEYS[1])

  ARGV[1] failures from which the address is locked out (api.authFailures.lockAfter)
  ARGV[2] TTL of the window counter (ms) (rateLimit-1's ARGV[1])

  Returns {"locked", seconds left of the lock-out (TTL; <= 0 if none)} or {"ok", the key's count of this second}.
]]
--- @function "rateLimit-1" as rateLimit

if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[1]) then
  return {'locked', redis.call('TTL', KEYS[1])}
end
return {'ok', rateLimit({KEYS[2]}, {ARGV[2]})}
