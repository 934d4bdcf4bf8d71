-- replace_tree.lua: compare-and-set of a whole tree with its Placement state
-- (PlacementStore::replace_tree). The decision was made in Rust on the tree read at the
-- expected generation; this script writes it only if the tree is still there.
-- KEYS[1] tree  KEYS[2] allocation hash  KEYS[3] change zset  KEYS[4] feed hash
-- KEYS[5..] (single-node mode only) consumer index sets named by ARGV below
-- ARGV[1] expected generation  ARGV[2] root  ARGV[3] number of providers (nseq floor)
-- ARGV[4] now (ms, for index members)  ARGV[5] F, then F (field, value) pairs: every field
-- of the tree hash except gen, cell and nseq
-- then C, then C records (consumer, token for a new record, group, signature, meta,
-- index key number or 0): the consumers holding allocations after the write
-- then R, then R pairs (consumer, index key number or 0): consumers removed from the tree.
-- Returns {'ok', new generation}, {'generation', actual} or {'no_tree'}.
local tree, alloc, chg, feed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local expected, root, nprov, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local gen = redis.call('HGET', tree, 'gen')
if not gen then return {'no_tree'} end
if tonumber(gen) ~= tonumber(expected) then return {'generation', tonumber(gen)} end
for _, f in ipairs(redis.call('HKEYS', tree)) do
  if f ~= 'gen' and f ~= 'cell' and f ~= 'nseq' then redis.call('HDEL', tree, f) end
end
local i = 5
local nf = tonumber(ARGV[i])
for k = 1, nf do
  redis.call('HSET', tree, ARGV[i + 2 * k - 1], ARGV[i + 2 * k])
end
i = i + 2 * nf + 1
if tonumber(redis.call('HGET', tree, 'nseq') or '0') < nprov then redis.call('HSET', tree, 'nseq', nprov) end
local nc = tonumber(ARGV[i])
for k = 0, nc - 1 do
  local b = i + 6 * k
  local consumer, token, group, sig, meta, ki = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], tonumber(ARGV[b + 6])
  local held = redis.call('HGET', alloc, consumer)
  if held then
    token = string.match(held, '^([^\n]*)\n')
  elseif ki > 0 then
    redis.call('SADD', KEYS[ki], root .. '|' .. token .. '|' .. now)
  end
  redis.call('HSET', alloc, consumer, token .. '\n' .. group .. '\n' .. sig .. '\n' .. meta)
end
i = i + 6 * nc + 1
local nr = tonumber(ARGV[i])
for k = 0, nr - 1 do
  local consumer, ki = ARGV[i + 2 * k + 1], tonumber(ARGV[i + 2 * k + 2])
  redis.call('HDEL', alloc, consumer)
  if ki > 0 then
    for _, m in ipairs(redis.call('SMEMBERS', KEYS[ki])) do
      if string.sub(m, 1, #root + 1) == root .. '|' then redis.call('SREM', KEYS[ki], m) end
    end
  end
end
local newgen = redis.call('HINCRBY', tree, 'gen', 1)
local seq = redis.call('HINCRBY', feed, 'seq', 1)
redis.call('ZADD', chg, seq, root)
return {'ok', newgen}
