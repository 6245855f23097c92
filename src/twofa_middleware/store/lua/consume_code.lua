-- Delete the code only if its digest matches: compare and delete in one step, so
-- of concurrent consumers exactly one wins. (The digest is a keyed hash, so a
-- non-constant-time comparison here reveals nothing about the code.)
-- KEYS[1]  the code hash          ARGV[1]  the digest
if redis.call('HGET', KEYS[1], 'digest') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
