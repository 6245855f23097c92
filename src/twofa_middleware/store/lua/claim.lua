-- Set a single-use marker unless it exists.
-- KEYS[1]  the marker             KEYS[2]  the tag's key index
-- ARGV[1]  ttl in ms              ARGV[2]  the marker's name in the index
-- Returns 0 when this call set it, else the ms the marker has left.
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  -- The index must outlive every key it lists, so that delete_user finds them all.
  redis.call('SADD', KEYS[2], ARGV[2])
  if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[1]) then
    redis.call('PEXPIRE', KEYS[2], ARGV[1])
  end
  return 0
end
return redis.call('PTTL', KEYS[1])
