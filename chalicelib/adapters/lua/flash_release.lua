#!lua flags=allow-oom
-- KEYS: reservation keys. ARGV[1]: prefix, then their rids.
-- Gives back what they hold (with flash_give_back.lua).
local released = 0
for i, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'rid') == ARGV[i + 1] then released = released + give_back(ARGV[1], key) end
end
return released
