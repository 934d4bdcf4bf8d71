-- feed_read.lua: one shard of the change feed since a sequence number, read atomically with
-- the shard's current sequence (the next cursor) and trim mark, and with the generation each
-- changed tree has now (so a reader that already holds it skips the tree).
-- KEYS[1] change zset  KEYS[2] feed hash   ARGV[1] since   ARGV[2] tree key prefix of the
-- shard ('<prefix>:{tag}:tree:'; the tree hashes share the shard's hash tag, so they live on
-- this node and slot)  ARGV[3] the reader's writer id: a tree whose last claim or release
-- came through the reader's own store handle gets no usage (the reader made that write and
-- holds its result, or reads the tree), which spares the usage of a process's own claims.
-- Returns {seq, trimmed, root, gen, since, usage, root, gen, since, usage, ...}: gen '' for
-- a deleted tree; when the tree's writes since generation `since` were all claims and
-- releases (claim.lua and release.lua keep 'us' and 'ul'), `since` and the tree's usage and
-- group fields as 'u:P:CLASS=n,g:GROUP=n,...', else both ''. No roots when since < trimmed
-- (the caller resyncs).
local since = tonumber(ARGV[1])
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
local trimmed = tonumber(redis.call('HGET', KEYS[2], 'trimmed') or '0')
local out = {seq, trimmed}
if since < trimmed then return out end
for _, r in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')) do
  local key = ARGV[2] .. r
  local h = redis.call('HMGET', key, 'gen', 'ul', 'us', 'lw')
  local gen = h[1]
  local from, usage = '', ''
  if gen and h[2] == gen and h[4] ~= ARGV[3] then
    from = h[3] or ''
    local parts = {}
    local all = redis.call('HGETALL', key)
    for i = 1, #all, 2 do
      local f = all[i]
      local k = string.sub(f, 1, 2)
      if k == 'u:' or k == 'g:' then parts[#parts + 1] = f .. '=' .. all[i + 1] end
    end
    usage = table.concat(parts, ',')
  end
  out[#out + 1] = r
  out[#out + 1] = gen or ''
  out[#out + 1] = from
  out[#out + 1] = usage
end
return out
