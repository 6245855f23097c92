-- Store a one-time code, replacing the previous one for the purpose (a resend
-- invalidates the old code), and list it in the user's key index.
-- KEYS[1]  the code hash          KEYS[2]  the tag's key index
-- ARGV[1]  ttl in ms              ARGV[2]  the code key's name in the index
-- ARGV[3]  digest                 ARGV[4]  issued_at (epoch seconds)
redis.call('HSET', KEYS[1], 'digest', ARGV[3], 'issued_at', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
-- The index must outlive every key it lists, so that delete_user finds them all.
redis.call('SADD', KEYS[2], ARGV[2])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return 0
