-- feed_touch.lua: records a change of `root` in a shard's change feed without writing a tree
-- (catalog writes use the reserved nil root, which readers see as "read the catalog again").
-- KEYS[1] change zset  KEYS[2] feed hash  ARGV[1] root
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
redis.call('ZADD', KEYS[1], seq, ARGV[1])
return seq
