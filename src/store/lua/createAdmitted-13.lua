--[[
  POST /v1/verify's stateful fraud controls and the create, in one step: one
  round trip where three scripts took three. In order, as the api ran them:
  1. the live-verification pointer of the number is claimed, when there is none
     (swapLive-1 from ""); when one is there, nothing at all is done and the api
     takes its other path (read it: 409, a resend, or a lapsed one taken over);
  2. the send is admitted in the velocity windows (checkVelocity-3); when a
     window is full, the pointer claimed in 1 is let go;
  3. the record is created and paid for (createVerification-9); when it is
     refused, the send admitted in 2 and the pointer claimed in 1 are let go.
  Each part is the script itself (`@function`), not a copy. Being one step, no
  other request sees the pointer or the windows between the parts.

  KEYS[1..9]   createVerification-9's KEYS
  KEYS[10]     live pointer (swapLive-1's KEYS[1]); not touched when ARGV[21] is ""
  KEYS[11..13] velocity windows (checkVelocity-3's KEYS)

  ARGV[1..20]  createVerification-9's ARGV (ARGV[1]: the request id)
  ARGV[21]     TTL of the live pointer (ms); "" = the account's live rule is off
  ARGV[22..29] checkVelocity-3's ARGV (now, send id, three limits and windows)

  Returns
    {"live", pointer}         a pointer is there; nothing was done
    {"limited", i, ms}        checkVelocity-3's refusal; nothing is left of this request
    {"err", code}             createVerification-9's refusal; nothing is left of this request
    {"ok", balance_after}     created
]]
--- @function "swapLive-1" as swapLive
--- @function "checkVelocity-3" as checkVelocity
--- @function "createVerification-9" as createVerification

local requestId = ARGV[1]
local live = ARGV[21] ~= ''
if live then
  local found = swapLive({KEYS[10]}, {'', requestId, ARGV[21]})
  if found ~= 'ok' then return {'live', found} end
end

local admitted = checkVelocity({KEYS[11], KEYS[12], KEYS[13]}, {ARGV[22], ARGV[23], ARGV[24], ARGV[25], ARGV[26], ARGV[27], ARGV[28], ARGV[29]})
if admitted[1] ~= 'ok' then
  if live then swapLive({KEYS[10]}, {requestId, '', '0'}) end
  return admitted
end

local createArgs = {}
for i = 1, 20 do createArgs[i] = ARGV[i] end
local created = createVerification({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]}, createArgs)
if created[1] ~= 'ok' then
  -- As FraudControls.releaseSend: the send leaves every window it was counted in.
  for i = 11, 13 do redis.call('ZREM', KEYS[i], ARGV[23]) end
  if live then swapLive({KEYS[10]}, {requestId, '', '0'}) end
end
return created
