-- Revocation resync: the epoch alone when the caller is current, else the
-- whole (unexpired) set.
-- KEYS[1] jti sorted set  KEYS[2] sub sorted set  KEYS[3] epoch counter
-- ARGV[1] epoch the caller holds ('' forces a full answer)  ARGV[2] now (unix s)
-- Returns {epoch} | {epoch, {jti, exp, ...}, {sub, cut-off, ...}}
local epoch = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
if ARGV[1] ~= '' and tonumber(ARGV[1]) == epoch then
  return {epoch}
end
return {
  epoch,
  redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf', 'WITHSCORES'),
  redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'),
}
