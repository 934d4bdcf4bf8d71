-- instance_delete.lua: removes a record and its index entries if it is still the one read.
-- KEYS[1] record  KEYS[2] shard's global index  KEYS[3] shard's project index
-- ARGV[1] the record as read  ARGV[2] index member
-- Returns 1 deleted, 0 changed since read, -1 missing.
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if cur ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
