#!lua flags=allow-oom
-- KEYS: sale key. ARGV: sale_id, the most the sale may still offer, and the epoch and
-- returns the caller read before its MySQL snapshot. Lowers `remaining` to `most` if
-- above; the units removed (0: none), 'other' for another sale, 'moved' when a
-- cancel gave units back since (or the sale was rebuilt): `most` may not count them.
-- (Admissions, settles and sweeps since the snapshot are safe: they move units MySQL
-- had not counted either way.)
local s = redis.call('HMGET', KEYS[1], 'sale_id', 'epoch', 'returns')
if s[1] ~= ARGV[1] then return 'other' end
if (s[2] or '') ~= ARGV[3] or (s[3] or '0') ~= ARGV[4] then return 'moved' end
local remaining, most = tonumber(redis.call('HGET', KEYS[1], 'remaining')), tonumber(ARGV[2])
if remaining > most then
  redis.call('HSET', KEYS[1], 'remaining', most)
  redis.call('HINCRBY', KEYS[1], 'seq', 1)
  return remaining - most
end
return 0
