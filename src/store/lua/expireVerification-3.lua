--[[
  Expire one verification whose time is up, whether or not anybody polls it.
  Called by the expiry sweeper for each request id due in the expiries set.
  Idempotent: only a `sent` or `delivered` request past its expires_at turns
  `expired` (one `verification.expired` event); anything else just leaves the
  set. A request whose expires_at is still ahead stays in the set.

  KEYS[1] verification hash
  KEYS[2] expiries sorted set
  KEYS[3] events stream

  ARGV[1] request_id (member of the expiries set)
  ARGV[2] now (ms since epoch)
  ARGV[3] events stream MAXLEN (approximate)

  Returns "expired" when this call expired it, "pending" when not due yet,
  else "skipped" (already terminal or gone).
]]
local v = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'account_id', 'method')
local status, expires_at = v[1], tonumber(v[2])
if not status or not expires_at then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'skipped'
end
if status ~= 'sent' and status ~= 'delivered' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'skipped'
end
if tonumber(ARGV[2]) < expires_at then return 'pending' end

redis.call('HSET', KEYS[1], 'status', 'expired')
redis.call('HSETNX', KEYS[1], 'at_expired', v[2])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*',
  'event', 'verification.expired', 'request_id', ARGV[1], 'account_id', v[3],
  'method', v[4], 'status', 'expired', 'timestamp', v[2], 'detail', '{"reason":"expired"}')
return 'expired'
