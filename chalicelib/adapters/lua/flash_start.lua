#!lua
-- KEYS: sale key, held key, active set, returned set, lost marker. ARGV: pid, sale_id, sale stock, limit, epoch.
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4], KEYS[5])
redis.call('HSET', KEYS[1], 'sale_id', ARGV[2], 'remaining', ARGV[3], 'sale_stock', ARGV[3], 'limit', ARGV[4],
           'epoch', ARGV[5])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
