-- placement_read.lua: a tree hash and its allocation hash read together, so that both are
-- of one tree generation (a pipeline of two HGETALLs could straddle a write).
-- KEYS[1] tree  KEYS[2] allocation hash
-- Returns {tree fields and values (HGETALL), allocation fields and values (HGETALL)}.
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
