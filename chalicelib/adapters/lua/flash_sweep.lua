#!lua flags=allow-oom
-- KEYS: the leases key (declared so a cluster runs the call on its master). ARGV: prefix, now ms, most records.
-- Gives back expired leases (with flash_give_back.lua); how many.
return sweep(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
