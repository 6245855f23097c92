-- Accept a TOTP time step only if it is later than every step accepted before,
-- so a code (or an older one still inside the window) is never accepted twice.
-- KEYS[1]  the last accepted step (no expiry: it lives as long as the enrollment)
-- ARGV[1]  the step being used
local last = tonumber(redis.call('GET', KEYS[1]))
if last ~= nil and tonumber(ARGV[1]) <= last then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
