-- cas.lua: compare-and-set of one string key.
-- KEYS[1] key  ARGV[1] expected value  ARGV[2] new value ('' with ARGV[3] = 'del' deletes)
-- ARGV[3] 'set' or 'del'
-- Returns 1 when applied, 0 when the value differs, -1 when the key is missing.
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if cur ~= ARGV[1] then return 0 end
if ARGV[3] == 'del' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
return 1
