-- beat.lua: records a host's heartbeat; it never goes back (a late report or an operator's
-- put_host carrying the heartbeat it read earlier leaves a later one in place).
-- KEYS[1] heartbeat hash (name -> µs)  ARGV[1] host name  ARGV[2] heartbeat (µs)
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '')
if not old or old < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
