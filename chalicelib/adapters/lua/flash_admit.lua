#!lua
-- One order's admission (with flash_give_back.lua).
-- KEYS[1] reservation key; then (sale key, held key) per product.
-- ARGV: prefix, rid, request hash, customer, now ms, lease ms, then one quantity per product.
-- -> {'ACCEPTED', rid, lines, swept} | {'REPLAY', rid} | {'CONFLICT', rid} | {'NOT_ON_SALE', pid index, swept}
--    | {'SOLD_OUT', index, remaining, swept} | {'LIMIT', index, held, limit, swept}
--    (swept: expired leases this call gave back)
local prefix, rid, hash, customer = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, lease = tonumber(ARGV[5]), tonumber(ARGV[6])
local rec = redis.call('HMGET', KEYS[1], 'rid', 'hash')
if rec[1] then
  if rec[2] ~= hash then return {'CONFLICT', rec[1]} end
  return {'REPLAY', rec[1]}
end
local swept = sweep(prefix, now, 20)
local n = (#KEYS - 1) / 2
local sales = {}
for i = 1, n do
  local qty = tonumber(ARGV[6 + i])
  local s = redis.call('HMGET', KEYS[2 * i], 'sale_id', 'remaining', 'limit')
  if not s[1] then return {'NOT_ON_SALE', i, swept} end
  if tonumber(s[2]) < qty then return {'SOLD_OUT', i, s[2], swept} end
  local limit = tonumber(s[3])
  if limit > 0 then
    local held = tonumber(redis.call('HGET', KEYS[2 * i + 1], customer) or '0')
    if held + qty > limit then return {'LIMIT', i, held, limit, swept} end
  end
  sales[i] = s[1]
end
local lines = {}
for i = 1, n do
  local qty = tonumber(ARGV[6 + i])
  redis.call('HINCRBY', KEYS[2 * i], 'remaining', -qty)
  redis.call('HINCRBY', KEYS[2 * i], 'seq', 1)
  redis.call('HINCRBY', KEYS[2 * i + 1], customer, qty)
  lines[i] = string.match(KEYS[2 * i], 'flash:sale:(%d+)$') .. ':' .. qty .. ':' .. sales[i]
end
redis.call('HSET', KEYS[1], 'rid', rid, 'hash', hash, 'state', 'leased', 'lines', table.concat(lines, ','),
           'customer', customer, 'admitted_ms', now)
redis.call('ZADD', prefix .. 'flash:leases', now + lease, KEYS[1])
redis.call('SET', prefix .. 'flash:ref:' .. rid, KEYS[1])
return {'ACCEPTED', rid, table.concat(lines, ','), swept}
