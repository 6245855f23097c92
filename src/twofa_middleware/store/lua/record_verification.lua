-- Mark the user, a device and an IP verified, bound the lists, set the retention.
-- KEYS[1]  the user's trust hash: u, d:<device>, i:<ip> -> epoch seconds
-- ARGV[1]  now (epoch seconds)      ARGV[2]  retention in ms
-- ARGV[3]  max IPs                  ARGV[4]  max devices
-- ARGV[5]  device field or ''       ARGV[6]  IP field or ''
-- ARGV[7]  invalidation channel     ARGV[8]  the user's tag (the message)
-- ARGV[9]  the device field this browser held until now (rotated away) or ''
local trust, now = KEYS[1], ARGV[1]
local device, ip, replaces = ARGV[5], ARGV[6], ARGV[9]

redis.call('HSET', trust, 'u', now)
if replaces ~= '' and replaces ~= device then redis.call('HDEL', trust, replaces) end
if device ~= '' then redis.call('HSET', trust, device, now) end
if ip ~= '' then redis.call('HSET', trust, ip, now) end

-- Drop the oldest fields with this prefix beyond the limit. The field just written
-- is never a candidate: a worker whose clock lags must not evict its own record.
local all = redis.call('HGETALL', trust)
local function bound(prefix, limit, keep)
  local others = {}
  for i = 1, #all, 2 do
    local field = all[i]
    if field ~= keep and string.sub(field, 1, 2) == prefix then
      others[#others + 1] = {field, tonumber(all[i + 1]) or 0}
    end
  end
  local kept = (keep ~= '') and 1 or 0
  local excess = #others + kept - limit
  if excess <= 0 then return end
  table.sort(others, function(a, b)
    if a[2] ~= b[2] then return a[2] < b[2] end
    return a[1] < b[1]
  end)
  for i = 1, excess do redis.call('HDEL', trust, others[i][1]) end
end
bound('i:', tonumber(ARGV[3]), ip)
bound('d:', tonumber(ARGV[4]), device)

redis.call('PEXPIRE', trust, ARGV[2])
-- Announced in the same atomic step: no near-cache can miss the change.
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 0
