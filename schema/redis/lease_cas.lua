-- lease_cas.lua: compare-and-set of one build lease, a JSON document in a hash field.
-- KEYS[1] the leases hash   ARGV[1] the instance (field)
-- ARGV[2] expected version ('0': the lease must not exist)
-- ARGV[3] the new JSON document, or '' to delete
-- Returns 1 when applied, 0 when the stored version differs (or the lease is missing,
-- or exists when ARGV[2] is '0').
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local expected = tonumber(ARGV[2])
if expected == 0 then
  if cur then return 0 end
else
  if not cur then return 0 end
  local v = cjson.decode(cur)['version']
  if tonumber(v) ~= expected then return 0 end
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return 1
