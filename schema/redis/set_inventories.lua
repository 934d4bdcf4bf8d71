-- set_inventories.lua: replaces one provider's inventories if the tree is at the expected
-- generation (Placement's PUT .../inventories). A class with usage cannot be removed.
-- KEYS[1] tree  KEYS[2] change zset  KEYS[3] feed hash
-- ARGV[1] provider  ARGV[2] expected generation  ARGV[3] root  ARGV[4..] pairs (class, inventory)
-- Returns {'ok', new generation, class, usage, ...} (usages of the provider) or an error status.
local tree, chg, feed = KEYS[1], KEYS[2], KEYS[3]
local pid, expected, root = ARGV[1], ARGV[2], ARGV[3]
local gen = redis.call('HGET', tree, 'gen')
if not gen then return {'no_tree'} end
if tonumber(gen) ~= tonumber(expected) then return {'generation', tonumber(gen)} end
if redis.call('HEXISTS', tree, 'p:' .. pid) == 0 then return {'not_found'} end
local new = {}
for i = 4, #ARGV, 2 do new[ARGV[i]] = ARGV[i + 1] end
local upre, ipre = 'u:' .. pid .. ':', 'inv:' .. pid .. ':'
local all = redis.call('HGETALL', tree)
local inuse, old, usages = {'in_use'}, {}, {}
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if string.sub(f, 1, #upre) == upre then
    local class = string.sub(f, #upre + 1)
    if tonumber(v) > 0 then
      if not new[class] then inuse[#inuse + 1] = class end
      usages[#usages + 1] = class
      usages[#usages + 1] = tonumber(v)
    end
  elseif string.sub(f, 1, #ipre) == ipre then
    old[#old + 1] = f
  end
end
if #inuse > 1 then return inuse end
if #old > 0 then redis.call('HDEL', tree, unpack(old)) end
for class, inv in pairs(new) do redis.call('HSET', tree, ipre .. class, inv) end
redis.call('HINCRBY', tree, 'pg:' .. pid, 1)
local newgen = redis.call('HINCRBY', tree, 'gen', 1)
local seq = redis.call('HINCRBY', feed, 'seq', 1)
redis.call('ZADD', chg, seq, root)
local out = {'ok', newgen}
for _, v in ipairs(usages) do out[#out + 1] = v end
return out
