-- create_child.lua: adds a provider under an existing parent of the tree.
-- KEYS[1] tree  KEYS[2] change zset  KEYS[3] feed hash
-- ARGV[1] provider  ARGV[2] parent  ARGV[3] root  ARGV[4] name  ARGV[5] traits csv
-- ARGV[6] aggregates csv  ARGV[7..] pairs (class, inventory string)
local tree, chg, feed = KEYS[1], KEYS[2], KEYS[3]
local pid, parent, root = ARGV[1], ARGV[2], ARGV[3]
if not redis.call('HGET', tree, 'gen') then return {'no_tree'} end
if redis.call('HEXISTS', tree, 'p:' .. parent) == 0 then return {'no_parent'} end
if redis.call('HEXISTS', tree, 'p:' .. pid) == 1 then return {'exists'} end
local seq = redis.call('HINCRBY', tree, 'nseq', 1)
redis.call('HSET', tree, 'p:' .. pid, seq .. '|' .. parent .. '|' .. ARGV[4],
  't:' .. pid, ARGV[5], 'ag:' .. pid, ARGV[6])
for i = 7, #ARGV, 2 do
  redis.call('HSET', tree, 'inv:' .. pid .. ':' .. ARGV[i], ARGV[i + 1])
end
local newgen = redis.call('HINCRBY', tree, 'gen', 1)
local fseq = redis.call('HINCRBY', feed, 'seq', 1)
redis.call('ZADD', chg, fseq, root)
return {'ok', newgen}
