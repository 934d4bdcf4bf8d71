-- delete_provider.lua: removes a provider without children or usage (a root: the whole
-- tree, which must hold no allocation), leaving a tombstone in the change feed.
-- KEYS[1] tree  KEYS[2] allocation hash  KEYS[3] shard's tree set  KEYS[4] change zset
-- KEYS[5] feed hash  KEYS[6] tombstone zset
-- ARGV[1] provider  ARGV[2] root  ARGV[3] key prefix of the shard's per-cell sets
-- ARGV[4] tombstones kept before the oldest are trimmed
-- Returns {'ok', new generation (0 when the tree is gone), name} or an error status.
local tree, alloc, trees, chg, feed, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local pid, root = ARGV[1], ARGV[2]
if not redis.call('HGET', tree, 'gen') then return {'no_tree'} end
local me = redis.call('HGET', tree, 'p:' .. pid)
if not me then return {'not_found'} end
local name = string.match(me, '^[^|]*|[^|]*|(.*)$')
local all = redis.call('HGETALL', tree)
local mine = {}
local upre, ipre, ppre = 'u:' .. pid .. ':', 'inv:' .. pid .. ':', 'p:'
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if string.sub(f, 1, 2) == ppre then
    local parent = string.match(v, '^[^|]*|([^|]*)|')
    if parent == pid then return {'in_use'} end
  elseif string.sub(f, 1, #upre) == upre then
    if tonumber(v) > 0 then return {'in_use'} end
    mine[#mine + 1] = f
  elseif string.sub(f, 1, #ipre) == ipre then
    mine[#mine + 1] = f
  end
end
local seq
if pid == root then
  if redis.call('HLEN', alloc) > 0 then return {'in_use'} end
  local cell = redis.call('HGET', tree, 'cell')
  redis.call('DEL', tree, alloc)
  redis.call('SREM', trees, root)
  if cell and cell ~= '' then redis.call('SREM', ARGV[3] .. cell, root) end
  seq = redis.call('HINCRBY', feed, 'seq', 1)
  redis.call('ZADD', chg, seq, root)
  redis.call('ZADD', dead, seq, root)
  local keep = tonumber(ARGV[4])
  local n = redis.call('ZCARD', dead)
  if n > keep then
    local old = redis.call('ZRANGE', dead, 0, n - keep - 1, 'WITHSCORES')
    local trimmed = 0
    for i = 1, #old, 2 do
      local m, s = old[i], tonumber(old[i + 1])
      if tonumber(redis.call('ZSCORE', chg, m) or '-1') == s then redis.call('ZREM', chg, m) end
      redis.call('ZREM', dead, m)
      if s > trimmed then trimmed = s end
    end
    redis.call('HSET', feed, 'trimmed', trimmed)
  end
  return {'ok', 0, name}
end
mine[#mine + 1] = 'p:' .. pid
mine[#mine + 1] = 't:' .. pid
mine[#mine + 1] = 'ag:' .. pid
mine[#mine + 1] = 'pg:' .. pid
redis.call('HDEL', tree, unpack(mine))
local newgen = redis.call('HINCRBY', tree, 'gen', 1)
seq = redis.call('HINCRBY', feed, 'seq', 1)
redis.call('ZADD', chg, seq, root)
return {'ok', newgen, name}
