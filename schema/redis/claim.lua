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
-- The tree's fields are read with one HMGET and written with one HSET (the amounts, group count,
-- Placement generations, 'gen', 'ul', 'lw' and 'us' computed here; the script is atomic, so
-- this is the same as an HINCRBY per field): a claim was about 25 calls into Redis, the
-- largest share of the server's time in `bench schedule`, and each write was one more
-- command in the AOF.

local tree, alloc, chg, feed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local consumer, token, group, maxph = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local sig, meta, root, member = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local writer = ARGV[9]
local np = tonumber(ARGV[10])
local first = 11 + np
-- Fields read: 1 'gen', 2 'ul', then 'p:' and 'pg:' of each provider named, then 'inv:' and
-- 'u:' of each item, then the group's count.
local fields = {'gen', 'ul'}
for i = 1, np do
  local pid = ARGV[10 + i]
  fields[#fields + 1] = 'p:' .. pid
  fields[#fields + 1] = 'pg:' .. pid
end
local items_at = #fields
for i = first, #ARGV, 3 do
  local k = ARGV[i] .. ':' .. ARGV[i + 1]
  fields[#fields + 1] = 'inv:' .. k
  fields[#fields + 1] = 'u:' .. k
end
local group_at = #fields + 1
if group ~= '' then fields[group_at] = 'g:' .. group end
local v = redis.call('HMGET', tree, unpack(fields))
local gen = v[1]
if not gen then return {'no_tree'} end
for i = 1, np do
  if not v[1 + 2 * i] then return {'not_in_tree', ARGV[10 + i]} end
end
local held = redis.call('HGET', alloc, consumer)
if held then
  local _, _, hsig = string.match(held, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n')
  if hsig == sig then return {'ok', tonumber(gen), 1} end
  return {'mismatch'}
end
local items = {}
local at = items_at
for i = first, #ARGV, 3 do
  local pid, class, amount = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local inv = v[at + 1]
  if not inv then return {'no_inventory', pid, class} end
  local cap, minu, maxu, step = string.match(inv, '^(%S+) (%S+) (%S+) (%S+)')
  cap, minu, maxu, step = tonumber(cap), tonumber(minu), tonumber(maxu), tonumber(step)
  if amount < minu or amount > maxu or amount % step ~= 0 then
    return {'units', pid, class, amount, minu, maxu, step}
  end
  items[#items + 1] = {pid, class, amount, cap, tonumber(v[at + 2] or '0')}
  at = at + 2
end
for _, it in ipairs(items) do
  if it[5] + it[3] > it[4] then
    return {'capacity', it[1], it[2], it[3], it[5], it[4]}
  end
end
local members = 0
if group ~= '' then members = tonumber(v[group_at] or '0') end
if group ~= '' and maxph ~= '' and members >= tonumber(maxph) then
  return {'group_limit', group, tonumber(maxph)}
end
-- New values, accumulated per field (as HINCRBY would, were a field named twice).
local new, order = {}, {}
local function add(field, base, by)
  if new[field] == nil then
    new[field] = base
    order[#order + 1] = field
  end
  new[field] = new[field] + by
end
for _, it in ipairs(items) do add('u:' .. it[1] .. ':' .. it[2], it[5], it[3]) end
if group ~= '' then add('g:' .. group, members, 1) end
for i = 1, np do add('pg:' .. ARGV[10 + i], tonumber(v[2 + 2 * i] or '0'), 1) end
local newgen = tonumber(gen) + 1
local set = {}
for _, f in ipairs(order) do
  set[#set + 1] = f
  set[#set + 1] = string.format('%d', new[f])
end
-- A claim or release extends the tree's run of usage-only writes ('us' the generation before
-- the run, 'ul' its last): the change feed gives the usage of a tree whose 'ul' is its 'gen'.
-- Any other script leaves 'ul' behind 'gen', which ends the run without knowing of it.
if tonumber(v[2] or '-1') ~= newgen - 1 then
  set[#set + 1] = 'us'
  set[#set + 1] = string.format('%d', newgen - 1)
end
set[#set + 1] = 'gen'
set[#set + 1] = string.format('%d', newgen)
set[#set + 1] = 'ul'
set[#set + 1] = string.format('%d', newgen)
set[#set + 1] = 'lw'
set[#set + 1] = writer
redis.call('HSET', tree, unpack(set))
redis.call('HDEL', tree, 'cg:' .. consumer)
redis.call('HSET', alloc, consumer, token .. '\n' .. group .. '\n' .. sig .. '\n' .. meta)
if KEYS[5] and member ~= '' then redis.call('SADD', KEYS[5], member) end
local seq = redis.call('HINCRBY', feed, 'seq', 1)
redis.call('ZADD', chg, seq, root)
return {'ok', newgen, 0}
