--[[
  After a master key rotation, state kept under a key NAME made with a MAC of
  the previous key (velocity windows, live-verification pointers, CLI
  cooldowns) is moved to the name the current key gives, so that it still
  applies. Called before the state is read; a no-op once done (or when there
  is nothing under the old name).

  KEYS[1] the name under the previous key
  KEYS[2] the name under the current key

  - only the old name exists: RENAME (the TTL goes with it);
  - both exist, sorted sets (velocity windows): union into the new name (same
    members counted once), the longer of the two TTLs, old name deleted;
  - both exist, anything else: the new name's value is the newer one; the old
    one is deleted.

  Returns 1 when something was moved, 0 otherwise.
]]
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  return 1
end
if redis.call('TYPE', KEYS[1]).ok == 'zset' and redis.call('TYPE', KEYS[2]).ok == 'zset' then
  local ttl = math.max(redis.call('PTTL', KEYS[1]), redis.call('PTTL', KEYS[2]))
  redis.call('ZUNIONSTORE', KEYS[2], 2, KEYS[2], KEYS[1], 'AGGREGATE', 'MAX')
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
redis.call('DEL', KEYS[1])
return 1
