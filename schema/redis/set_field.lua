-- set_field.lua: replaces one provider's traits ('t:') or aggregates ('ag:') if the tree is
-- at the expected generation.
-- KEYS[1] tree  KEYS[2] change zset  KEYS[3] feed hash
-- ARGV[1] provider  ARGV[2] expected generation  ARGV[3] root  ARGV[4] field prefix  ARGV[5] value
local tree, chg, feed = KEYS[1], KEYS[2], KEYS[3]
local pid, expected, root = ARGV[1], ARGV[2], ARGV[3]
local gen = redis.call('HGET', tree, 'gen')
if not gen then return {'no_tree'} end
if tonumber(gen) ~= tonumber(expected) then return {'generation', tonumber(gen)} end
if redis.call('HEXISTS', tree, 'p:' .. pid) == 0 then return {'not_found'} end
redis.call('HSET', tree, ARGV[4] .. pid, ARGV[5])
redis.call('HINCRBY', tree, 'pg:' .. pid, 1)
local newgen = redis.call('HINCRBY', tree, 'gen', 1)
local seq = redis.call('HINCRBY', feed, 'seq', 1)
redis.call('ZADD', chg, seq, root)
return {'ok', newgen}
