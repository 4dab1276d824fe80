#!lua
-- Reconcile with nothing on its way: the sale's remaining units set to exactly what
-- MySQL can still sell, and the give-backs of cancelled orders that never reached
-- Redis applied (held units), only if nothing moved the sale since the caller read
-- its `seq` (before its MySQL snapshot). O(cancelled orders), not O(customers).
-- KEYS: sale key, held key, returned set. ARGV: sale_id, expected seq, remaining,
-- watermark, then (order id, customer, units) per cancelled order line of the sale.
-- -> the remaining units before (negative when it had re-taken more than it had), or 'moved'.
local s = redis.call('HMGET', KEYS[1], 'sale_id', 'seq', 'remaining')
if s[1] ~= ARGV[1] or (s[2] or '0') ~= ARGV[2] then return 'moved' end
redis.call('HSET', KEYS[1], 'remaining', ARGV[3], 'watermark', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'seq', 1)
for i = 5, #ARGV, 3 do
  if redis.call('SADD', KEYS[3], ARGV[i]) == 1 then
    if redis.call('HINCRBY', KEYS[2], ARGV[i + 1], -tonumber(ARGV[i + 2])) <= 0 then
      redis.call('HDEL', KEYS[2], ARGV[i + 1])
    end
  end
end
return tonumber(s[3])
