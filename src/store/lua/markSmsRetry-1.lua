--[[
  Mark an SMS delivery as waiting for its retry, unless the SMSC's late
  submit_sm_resp already marked it accepted (mapSmsMessage-3) in the meantime.

  KEYS[1] verification hash

  Returns 1 when marked `retry`, 0 when the state was no longer `submitting`.
]]
if redis.call('HGET', KEYS[1], 'sms_state') ~= 'submitting' then return 0 end
redis.call('HSET', KEYS[1], 'sms_state', 'retry')
return 1
