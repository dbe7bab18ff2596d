--[[
  Deletes the sealed code (code_enc) of a request that has just ended
  (verified, expired, canceled, failed): nothing may deliver it again, so
  nothing keeps it for the record's retention; that includes the copy
  resendVerification-5 keeps in `resend_undo` (for undoResend-4, which puts
  it back only on a live request). Included by every script that ends a
  request.
]]
local function dropSealedCode(key)
  redis.call('HDEL', key, 'code_enc')
  local undo = redis.call('HGET', key, 'resend_undo')
  if undo then
    local u = cjson.decode(undo)
    if u.code_enc then
      u.code_enc = nil
      redis.call('HSET', key, 'resend_undo', cjson.encode(u))
    end
  end
end
