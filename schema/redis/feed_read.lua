-- feed_read.lua: one shard of the change feed since a sequence number, read atomically with
-- the shard's current sequence (the next cursor) and trim mark, and with the generation each
-- changed tree has now (so a reader that already holds it skips the tree).
-- KEYS[1] change zset  KEYS[2] feed hash   ARGV[1] since   ARGV[2] tree key prefix of the
-- shard ('<prefix>:{tag}:tree:'; the tree hashes share the shard's hash tag, so they live on
-- this node and slot).
-- Returns {seq, trimmed, root, gen, root, gen, ...} (gen '' for a deleted tree); no roots
-- when since < trimmed (the caller resyncs).
local since = tonumber(ARGV[1])
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
local trimmed = tonumber(redis.call('HGET', KEYS[2], 'trimmed') or '0')
local out = {seq, trimmed}
if since < trimmed then return out end
for _, r in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')) do
  out[#out + 1] = r
  out[#out + 1] = redis.call('HGET', ARGV[2] .. r, 'gen') or ''
end
return out
