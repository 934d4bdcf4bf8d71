-- instance_create.lua: the instance record and its listing index entries, atomically.
-- KEYS[1] record  KEYS[2] shard's global index  KEYS[3] shard's project index
-- ARGV[1] JSON record  ARGV[2] index member
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[2])
return 1
