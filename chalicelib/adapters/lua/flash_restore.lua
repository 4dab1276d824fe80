#!lua
-- A rebuild after Redis lost the sale: the sale as MySQL says it stands.
-- KEYS: sale key, held key, active set, returned set, lost marker. ARGV: pid, sale_id, sale stock,
-- limit, remaining, watermark, epoch, n, then n order ids whose units MySQL already gave back,
-- then customer, units pairs.
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') + 1
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4], KEYS[5])
redis.call('HSET', KEYS[1], 'sale_id', ARGV[2], 'remaining', ARGV[5], 'sale_stock', ARGV[3], 'limit', ARGV[4],
           'watermark', ARGV[6], 'seq', seq, 'epoch', ARGV[7])
local n = tonumber(ARGV[8])
for i = 9, 8 + n do redis.call('SADD', KEYS[4], ARGV[i]) end
for i = 9 + n, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('SADD', KEYS[3], ARGV[1])
return 1
