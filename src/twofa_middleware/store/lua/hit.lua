-- Count a hit in a fixed window that starts at the first hit.
-- KEYS[1]  the counter            KEYS[2]  the tag's key index
-- ARGV[1]  window in ms           ARGV[2]  the counter's name in the index
-- Returns {count, ms until the window ends}.
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
-- A new counter has no expiry yet (nor would one somehow left without it, which
-- must not count forever).
if ttl < 0 then
  ttl = tonumber(ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
  -- The index must outlive every key it lists, so that delete_user finds them all.
  redis.call('SADD', KEYS[2], ARGV[2])
  if redis.call('PTTL', KEYS[2]) < ttl then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end
return {count, ttl}
