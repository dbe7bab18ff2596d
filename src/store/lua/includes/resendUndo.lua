--[[
  The fields of a send that a resend replaces: resendVerification-5 keeps
  them, as they were, in the record's `resend_undo` (JSON); undoResend-4 and
  settleRefusedResend-4 put them back (putBackSend). One list, so that what is
  kept and what is put back never drift apart.
]]
local RESEND_REPLACED = {'dial_started', 'rang_at', 'answered_at', 'outcome', 'final_sip_status', 'sms_state',
  'sms_attempts', 'sms_unconfirmed_until', 'sms_nobind_since', 'sms_waits', 'refunded', 'code_mac', 'code_enc',
  'send_cost', 'sms_superseded_ids', 'last_send_at', 'sends'}

-- Puts back on `key` the fields kept in `undo` (decoded `resend_undo`); one not kept is deleted. `keepSends`: the
-- record's `sends` stays as it is.
local function putBackSend(key, undo, keepSends)
  for _, name in ipairs(RESEND_REPLACED) do
    if not (keepSends and name == 'sends') then
      if undo[name] then redis.call('HSET', key, name, undo[name]) else redis.call('HDEL', key, name) end
    end
  end
end
