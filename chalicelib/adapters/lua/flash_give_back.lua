-- Shared by the admission, the sweep and the release (the loader puts it after their shebang line).
-- give_back: returns the units of one reservation record (if it still holds them) and deletes it.
-- sweep: gives back the expired leases (the process died between Redis and SQS), at most `max`.
local function give_back(prefix, rec_key)
  local rec = redis.call('HMGET', rec_key, 'rid', 'state', 'lines', 'customer')
  if not rec[1] then return 0 end
  if rec[2] ~= 'leased' and rec[2] ~= 'queued' then return 0 end
  for pid, qty, sale_id in string.gmatch(rec[3], '(%d+):(%d+):(%w+)') do
    local sale = prefix .. 'flash:sale:' .. pid
    if redis.call('HGET', sale, 'sale_id') == sale_id then
      redis.call('HINCRBY', sale, 'remaining', qty)
      redis.call('HINCRBY', sale, 'seq', 1)
      local held = prefix .. 'flash:held:' .. pid
      if redis.call('HINCRBY', held, rec[4], -qty) <= 0 then redis.call('HDEL', held, rec[4]) end
    end
  end
  redis.call('DEL', rec_key, prefix .. 'flash:ref:' .. rec[1])
  redis.call('ZREM', prefix .. 'flash:leases', rec_key)
  return 1
end

local function sweep(prefix, now, max)
  local expired = redis.call('ZRANGEBYSCORE', prefix .. 'flash:leases', '-inf', now, 'LIMIT', 0, max)
  for _, rec_key in ipairs(expired) do
    if redis.call('HGET', rec_key, 'state') == 'leased' then give_back(prefix, rec_key) end
    redis.call('ZREM', prefix .. 'flash:leases', rec_key)
  end
  return #expired
end
