--[[
  Everything one webhook delivery needs to know before it goes out, in one round trip
  (events/webhook-processor.ts): whether an earlier event of its request must go first, the
  account's current URL and whether its circuit breaker lets the delivery go, and the record and
  secret the payload and signature are made from. Four round trips before this script.

  Order (Keys.webhookOrder, scores ORDER_WRITTEN -1, ORDER_QUEUED 0, ORDER_HELD 0.5, ORDER_DONE 1):
  an earlier member queued or held (its job exists, maybe in retry or itself waiting) holds this
  delivery back, as does one written but not handled by any webhook consumer yet, for up to ARGV[4]
  ms after it was written. A delivery held back marks itself HELD: the process that marks the
  earlier one done wakes its job (WebhookQueue.promoteHeld). Earlier ones
  written longer ago and still not handled are given up waiting for: marked done here, and returned
  so the caller can warn. Their age is taken on Redis's clock (TIME), the clock their stream ids
  were made on, so a worker whose clock is off neither waits for ever nor gives up at once.

  Breaker (as gateWebhook-2 did): open from `open_until` after a run of failures; once that time has
  passed, the first delivery to ask becomes the probe (it holds `probe_until` for the probe's lease)
  and every other one waits for its result. Nothing is claimed for a delivery held back by the
  order or for an account without a URL.

  KEYS[1] webhook order set of the request (Keys.webhookOrder)
  KEYS[2] account hash (Keys.account): webhook_url, secret_enc
  KEYS[3] breaker hash (Keys.webhookBreaker)
  KEYS[4] verification hash: the fields ARGV[6..] name

  ARGV[1] this event's order member (webhook-queue.ts orderMember)
  ARGV[2] now, ms since epoch (the breaker's clock: tripWebhookBreaker-2 writes it with the same)
  ARGV[3] probe lease, ms (longer than a delivery may take)
  ARGV[4] webhooks.orderMaxWaitMs
  ARGV[5] '1': return {'done'} when this event is done already (ORDER_DONE); '0' (a replay): send it all the same
  ARGV[6..] the record's fields to read (the processor's list: phone_enc, status, at_<final status> ...)

  Returns {'done'} (this event is done already: ORDER_DONE), {'held'}, or
    { state, url, until, failures, <each field of ARGV[6..]>, secret_enc, given_up_1, given_up_2 ... }
  with state one of:
    'nourl'   the account has no webhook URL (any more): drop the event
    'open'    do not deliver before `until` (ms since epoch): cooling off, or another delivery is the probe
    'closed'  deliver
    'probe'   deliver: this delivery decides whether the breaker closes
  failures the account's failed deliveries in a row (a success must reset them); the record's and
  the secret's fields only for 'closed' and 'probe' (false when missing); given_up_* the earlier
  members marked done here.
]]
local member = ARGV[1]
-- Delivered, dropped or given up already (a job run again after its worker died; an event the
-- consumer sent at once whose stream entry is handled again): nothing to send. Not asked for a
-- replay, which sends a given-up event again on purpose.
if ARGV[5] == '1' and tonumber(redis.call('ZSCORE', KEYS[1], member)) == 1 then return { 'done' } end
local pending = redis.call('ZRANGEBYSCORE', KEYS[1], -1, '(1', 'WITHSCORES')
local givenUp = {}
if #pending > 0 then
  local t = redis.call('TIME')
  local nowRedis = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local maxWait = tonumber(ARGV[4])
  for i = 1, #pending, 2 do
    local earlier = pending[i]
    if earlier < member then
      if tonumber(pending[i + 1]) ~= -1 or nowRedis - tonumber(string.sub(earlier, 1, 15)) < maxWait then
        redis.call('ZADD', KEYS[1], 'XX', 'GT', 0.5, member)
        return { 'held' }
      end
      givenUp[#givenUp + 1] = earlier
    end
  end
  for _, m in ipairs(givenUp) do redis.call('ZADD', KEYS[1], 'XX', 1, m) end
end

-- The record's fields and the secret: one slot each, false when not read or missing.
local slots = #ARGV - 5 + 1
local function reply(state, url, untilMs, failures, fields)
  local out = { state, url or false, untilMs, failures }
  for i = 1, slots do out[4 + i] = fields and fields[i] or false end
  for _, m in ipairs(givenUp) do out[#out + 1] = m end
  return out
end

local url = redis.call('HGET', KEYS[2], 'webhook_url')
if not url then return reply('nourl', nil, 0, 0) end
local b = redis.call('HMGET', KEYS[3], 'open_until', 'probe_until', 'failures')
local failures = tonumber(b[3]) or 0
local openUntil = tonumber(b[1])
local state = 'closed'
if openUntil then
  local now = tonumber(ARGV[2])
  if now < openUntil then return reply('open', url, openUntil, failures) end
  local probeUntil = tonumber(b[2]) or 0
  if now < probeUntil then return reply('open', url, probeUntil, failures) end
  redis.call('HSET', KEYS[3], 'probe_until', now + tonumber(ARGV[3]))
  state = 'probe'
end
local fields = redis.call('HMGET', KEYS[4], unpack(ARGV, 6))
fields[slots] = redis.call('HGET', KEYS[2], 'secret_enc')
return reply(state, url, 0, failures, fields)
