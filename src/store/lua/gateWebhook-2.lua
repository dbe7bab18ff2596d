--[[
  Before one webhook delivery (events/webhook-breaker.ts), in one round trip:
  the account's current webhook URL, and whether its circuit breaker lets the
  delivery go. A breaker is open from `open_until` on a run of failures; once
  that time has passed, the first delivery to ask becomes the probe (it holds
  `probe_until` for the probe's lease) and every other waits for its result.
  No URL: nothing is claimed (the caller drops the event).

  KEYS[1] account hash (Keys.account)
  KEYS[2] breaker hash (Keys.webhookBreaker)

  ARGV[1] now, ms since epoch
  ARGV[2] probe lease, ms (longer than a delivery may take)

  Returns { url or '', state, until, failures }, state one of:
    'closed'  deliver
    'probe'   deliver: this delivery decides whether the breaker closes
    'open'    do not deliver before `until` (ms since epoch): cooling off, or another delivery is the probe
  and failures the account's failed deliveries in a row (a success must reset them).
]]
local url = redis.call('HGET', KEYS[1], 'webhook_url')
if not url then return { '', 'closed', 0, 0 } end
local b = redis.call('HMGET', KEYS[2], 'open_until', 'probe_until', 'failures')
local failures = tonumber(b[3]) or 0
local openUntil = tonumber(b[1])
if not openUntil then return { url, 'closed', 0, failures } end
local now = tonumber(ARGV[1])
if now < openUntil then return { url, 'open', openUntil, failures } end
local probeUntil = tonumber(b[2]) or 0
if now < probeUntil then return { url, 'open', probeUntil, failures } end
redis.call('HSET', KEYS[2], 'probe_until', now + tonumber(ARGV[2]))
return { url, 'probe', 0, failures }
