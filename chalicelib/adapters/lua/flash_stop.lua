-- Takes a product off sale: its keys gone.
-- KEYS: sale key, held key, active set, returned set, lost marker. ARGV: pid.
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4], KEYS[5])
return 1
