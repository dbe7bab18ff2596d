--[[
  Apply one delivery event of a workflow step (an event carrying `step`) to
  its verification record: the attempt's own status first, then the request.
  A failed step with steps left does not fail the request (the workflow
  advancer starts the next one); only the last step's failure does. A
  `delivered` of any step makes the request delivered. Events of a step that
  is no longer current (it timed out and the next one started) only update
  their attempt, and so do events arriving once the request is final (the
  refund of an attempt that never reached the network included: it is made
  whatever the request's status). Idempotent: attempt statuses only move
  forward, a refund is made once per attempt, request statuses are recorded
  once (at_<status>).

  KEYS[1] verification hash
  KEYS[2] account hash (for refunds)
  KEYS[3] usage hash of the account for the day the attempt started: a refunded
          attempt is taken out of it (billing per attempt actually sent)
  KEYS[4] conversion hash of that day: a refunded attempt leaves `country:<cc>:<method>:sent`
          (every step's send was counted there, by createVerification-9 or advanceWorkflow-8)

  ARGV[1] status: delivered | failed
  ARGV[2] timestamp (ms since epoch)
  ARGV[3] outcome detail fields "k1\nv1\nk2\nv2..." (may be empty); applied to the
          record only when the step is current
  ARGV[4] refund: "1" when the attempt never reached the network
  ARGV[5] step index of the event
  ARGV[6] the event's stream id: the last step's `failed` records it as `final_event`

  Returns the request status after the event, or false when the record is gone.
]]
--- @include "dropSealedCode"
--- @include "refundCharge"
local v = redis.call('HMGET', KEYS[1], 'status', 'wf_step', 'wf_steps')
local status = v[1]
if not status then return false end
local st, ts, step = ARGV[1], ARGV[2], tonumber(ARGV[5])
local cur, steps = tonumber(v[2] or '0'), tonumber(v[3] or '1')
local p = 'att' .. step .. '_'
local ast = redis.call('HGET', KEYS[1], p .. 'status')

local reason = nil
local fields = {}
if ARGV[3] ~= '' then
  for line in string.gmatch(ARGV[3], '([^\n]*)\n?') do table.insert(fields, line) end
  for i = 1, #fields - 1, 2 do
    if fields[i] == 'failure_reason' then reason = fields[i + 1] end
  end
end

if st == 'delivered' then
  if ast == 'sent' then redis.call('HSET', KEYS[1], p .. 'status', 'delivered') end
  redis.call('HSETNX', KEYS[1], p .. 'delivered_at', ts)
elseif st == 'failed' then
  if ast == 'sent' or ast == 'delivered' then
    redis.call('HSET', KEYS[1], p .. 'status', 'failed')
    redis.call('HSETNX', KEYS[1], p .. 'ended_at', ts)
    if reason then redis.call('HSETNX', KEYS[1], p .. 'reason', reason) end
  end
  if ARGV[4] == '1' and ast and redis.call('HSETNX', KEYS[1], p .. 'refunded', '1') == 1 then
    local a = redis.call('HMGET', KEYS[1], p .. 'cost', p .. 'method', 'country')
    local cost = tonumber(a[1] or '0')
    refundCharge(KEYS[2], KEYS[1], KEYS[3], KEYS[4], a[2], cost, a[3])
    if cost > 0 then redis.call('HSET', KEYS[1], p .. 'cost', 0) end
  end
end

if step ~= cur then return status end
local live = (status == 'sent' or status == 'delivered')
-- A final request records nothing more (no at_<status>, no outcome fields), except a late `delivered` after
-- `verified` (the stream lagged the check: it was delivered), as in applyEvent-4.
if not live and not (st == 'delivered' and status == 'verified') then return status end
for i = 1, #fields - 1, 2 do
  if fields[i] ~= '' then redis.call('HSET', KEYS[1], fields[i], fields[i + 1]) end
end
if st == 'delivered' then
  redis.call('HSETNX', KEYS[1], 'at_delivered', ts)
  if status == 'sent' then
    redis.call('HSET', KEYS[1], 'status', 'delivered')
    status = 'delivered'
  end
elseif st == 'failed' and live and step >= steps - 1 then
  redis.call('HSETNX', KEYS[1], 'at_failed', ts)
  redis.call('HSET', KEYS[1], 'status', 'failed')
  if ARGV[6] and ARGV[6] ~= '' then redis.call('HSETNX', KEYS[1], 'final_event', ARGV[6]) end
  dropSealedCode(KEYS[1])
  status = 'failed'
end
return status
