--[[
  Compare-and-set of the live-verification pointer of one (account, number):
  the pointer moves only when it still holds what the caller read, so two
  concurrent requests for one number cannot both become the live one.

  KEYS[1] string: live request id (key name is an HMAC of account and number)

  ARGV[1] expected current value ("" = no pointer)
  ARGV[2] new request id ("" = delete the pointer)
  ARGV[3] TTL of the pointer (ms): the new request's validity

  Returns "ok", or the value actually found ("" when none) when it changed meanwhile.
]]
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return cur end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[3]))
end
return 'ok'
