-- claim.lua: one consumer's amounts on one provider tree, checked and written atomically.
-- Decides exactly as ClaimRequest::evaluate (src/model/placement.rs), in the same order.
-- KEYS[1] tree hash   KEYS[2] allocation hash   KEYS[3] change zset   KEYS[4] feed hash
-- KEYS[5] (single-node mode only) the consumer's tree index set
-- ARGV[1] consumer  ARGV[2] token  ARGV[3] group ('' = none)  ARGV[4] max_per_host ('' = none)
-- ARGV[5] signature "pid=CLASS=amount,..." (normalized, key order)  ARGV[6] meta JSON
-- ARGV[7] root  ARGV[8] index member ('' = none)  ARGV[9] writer (the store handle's id, kept
-- as 'lw' for feed_read.lua)  ARGV[10] n providers, then n provider ids, then triples
-- (provider, class, amount) in key order.
-- A claim also moves Placement's generation ('pg:<provider>') of every provider it names and
-- starts the consumer at Placement generation 1 (no 'cg:<consumer>' field).
local tree, alloc, chg, feed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local consumer, token, group, maxph = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local sig, meta, root, member = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local gen = redis.call('HGET', tree, 'gen')
if not gen then return {'no_tree'} end
local writer = ARGV[9]
local np = tonumber(ARGV[10])
for i = 1, np do
  local pid = ARGV[10 + i]
  if redis.call('HEXISTS', tree, 'p:' .. pid) == 0 then return {'not_in_tree', pid} end
end
local held = redis.call('HGET', alloc, consumer)
if held then
  local _, _, hsig = string.match(held, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n')
  if hsig == sig then return {'ok', tonumber(gen), 1} end
  return {'mismatch'}
end
local first = 11 + np
local items = {}
for i = first, #ARGV, 3 do
  local pid, class, amount = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local inv = redis.call('HGET', tree, 'inv:' .. pid .. ':' .. class)
  if not inv then return {'no_inventory', pid, class} end
  local cap, minu, maxu, step = string.match(inv, '^(%S+) (%S+) (%S+) (%S+)')
  cap, minu, maxu, step = tonumber(cap), tonumber(minu), tonumber(maxu), tonumber(step)
  if amount < minu or amount > maxu or amount % step ~= 0 then
    return {'units', pid, class, amount, minu, maxu, step}
  end
  items[#items + 1] = {pid, class, amount, cap}
end
for _, it in ipairs(items) do
  local used = tonumber(redis.call('HGET', tree, 'u:' .. it[1] .. ':' .. it[2]) or '0')
  if used + it[3] > it[4] then
    return {'capacity', it[1], it[2], it[3], used, it[4]}
  end
end
if group ~= '' and maxph ~= '' then
  local members = tonumber(redis.call('HGET', tree, 'g:' .. group) or '0')
  if members >= tonumber(maxph) then return {'group_limit', group, tonumber(maxph)} end
end
for _, it in ipairs(items) do
  redis.call('HINCRBY', tree, 'u:' .. it[1] .. ':' .. it[2], it[3])
end
if group ~= '' then redis.call('HINCRBY', tree, 'g:' .. group, 1) end
for i = 1, np do redis.call('HINCRBY', tree, 'pg:' .. ARGV[10 + i], 1) end
redis.call('HDEL', tree, 'cg:' .. consumer)
redis.call('HSET', alloc, consumer, token .. '\n' .. group .. '\n' .. sig .. '\n' .. meta)
if KEYS[5] and member ~= '' then redis.call('SADD', KEYS[5], member) end
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
return {'ok', newgen, 0}
