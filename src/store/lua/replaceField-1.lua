--[[
  Replace a hash field's value only while it is still the one read: a value re-sealed under the current master
  key (after a rotation) never overwrites one written meanwhile.

  KEYS[1] hash
  ARGV[1] field
  ARGV[2] the value read
  ARGV[3] the new value

  Returns 1 when replaced, 0 when the field had changed (or is gone).
]]
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
