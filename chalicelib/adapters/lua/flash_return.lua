#!lua flags=allow-oom
-- A cancelled or expired sale order's units back to the sale it was sold in, once:
-- the returned set remembers the order (reconcile and rebuild add the orders MySQL
-- already counts as returned, so a late call changes nothing).
-- KEYS: (sale key, held key, returned set) per line. ARGV: order id, customer, then qty, sale_id per line.
local order_id, customer, units = ARGV[1], ARGV[2], 0
for i = 1, #KEYS / 3 do
  local sale, held, done = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local qty = tonumber(ARGV[1 + 2 * i])
  if redis.call('HGET', sale, 'sale_id') == ARGV[2 + 2 * i] and redis.call('SADD', done, order_id) == 1 then
    redis.call('HINCRBY', sale, 'remaining', qty)
    redis.call('HINCRBY', sale, 'seq', 1)
    redis.call('HINCRBY', sale, 'returns', 1)
    if redis.call('HINCRBY', held, customer, -qty) <= 0 then redis.call('HDEL', held, customer) end
    units = units + qty
  end
end
return units
