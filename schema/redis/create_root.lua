-- create_root.lua: a new provider tree with its root provider, indexed and in the feed.
-- KEYS[1] tree  KEYS[2] shard's tree set  KEYS[3] change zset  KEYS[4] feed hash
-- KEYS[5] shard's set of the cell's trees (ignored when ARGV[2] is '')
-- ARGV[1] root  ARGV[2] cell ('' = none)  ARGV[3] name  ARGV[4] traits csv  ARGV[5] aggregates csv
-- ARGV[6..] pairs (class, inventory "capacity min max step total reserved ratio")
local tree, trees, chg, feed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local root, cell = ARGV[1], ARGV[2]
if redis.call('EXISTS', tree) == 1 then return {'exists'} end
redis.call('HSET', tree, 'gen', 1, 'cell', cell, 'nseq', 0,
  'p:' .. root, '0||' .. ARGV[3], 't:' .. root, ARGV[4], 'ag:' .. root, ARGV[5])
for i = 6, #ARGV, 2 do
  redis.call('HSET', tree, 'inv:' .. root .. ':' .. ARGV[i], ARGV[i + 1])
end
redis.call('SADD', trees, root)
if cell ~= '' then redis.call('SADD', KEYS[5], root) end
local seq = redis.call('HINCRBY', feed, 'seq', 1)
redis.call('ZADD', chg, seq, root)
return {'ok', 1}
