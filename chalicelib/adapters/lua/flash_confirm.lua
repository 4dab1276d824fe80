#!lua flags=allow-oom
-- KEYS: reservation keys. ARGV[1]: prefix, then their rids. Marks leased ones queued.
local queued = 0
for i, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'rid') == ARGV[i + 1] and redis.call('HGET', key, 'state') == 'leased' then
    redis.call('HSET', key, 'state', 'queued')
    redis.call('ZREM', ARGV[1] .. 'flash:leases', key)
    queued = queued + 1
  end
end
return queued
