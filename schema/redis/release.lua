-- release.lua: removes one consumer's allocation from one tree (idempotent).
-- KEYS[1] tree  KEYS[2] allocation hash  KEYS[3] change zset  KEYS[4] feed hash
-- KEYS[5] (single-node mode only) the consumer's tree index set
-- ARGV[1] consumer  ARGV[2] root  ARGV[3] writer (the store handle's id, kept as 'lw')
-- Returns {'none'} or {'ok', token, new generation}.
local tree, alloc, chg, feed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local consumer, root, writer = ARGV[1], ARGV[2], ARGV[3] or ''
local rec = redis.call('HGET', alloc, consumer)
if not rec then return {'none'} end
local token, group, sig = string.match(rec, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n')
for pid, class, amount in string.gmatch(sig, '([^=,]+)=([^=,]+)=(%d+)') do
  local f = 'u:' .. pid .. ':' .. class
  if redis.call('HINCRBY', tree, f, -tonumber(amount)) <= 0 then redis.call('HDEL', tree, f) end
end
if group and group ~= '' then
  local f = 'g:' .. group
  if redis.call('HINCRBY', tree, f, -1) <= 0 then redis.call('HDEL', tree, f) end
end
redis.call('HDEL', alloc, consumer)
redis.call('HDEL', tree, 'cg:' .. consumer)
if KEYS[5] then
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[5])) do
    if string.sub(m, 1, #root + 1) == root .. '|' then redis.call('SREM', KEYS[5], m) end
  end
end
local newgen = redis.call('HINCRBY', tree, 'gen', 1)
-- A claim or release extends the tree's run of usage-only writes ('us' the generation before
-- the run, 'ul' its last): the change feed gives the usage of a tree whose 'ul' is its 'gen'.
-- Any other script leaves 'ul' behind 'gen', which ends the run without knowing of it.
if tonumber(redis.call('HGET', tree, 'ul') or '-1') ~= newgen - 1 then
  redis.call('HSET', tree, 'us', newgen - 1)
end
redis.call('HSET', tree, 'ul', newgen, 'lw', writer)
local seq = redis.call('HINCRBY', feed, 'seq', 1)
redis.call('ZADD', chg, seq, root)
return {'ok', token, newgen}
