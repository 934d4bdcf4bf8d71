-- host_put.lua: writes a host record and/or its heartbeat; the heartbeat never goes back.
-- KEYS[1] hosts hash (name -> JSON record)  KEYS[2] heartbeat hash (name -> µs), which shares
-- the hosts hash's slot ('{<prefix>:hosts}:beat')  ARGV[1] host name  ARGV[2] heartbeat (µs)
-- ARGV[3] the record's JSON, or '' for a report (heartbeat only: the record must exist).
-- Returns 1, or 0 when a report names an unknown host.
local name, at = ARGV[1], tonumber(ARGV[2])
if ARGV[3] == '' then
  if redis.call('HEXISTS', KEYS[1], name) == 0 then return 0 end
else
  redis.call('HSET', KEYS[1], name, ARGV[3])
end
local old = tonumber(redis.call('HGET', KEYS[2], name) or '')
if not old or old < at then redis.call('HSET', KEYS[2], name, ARGV[2]) end
return 1
