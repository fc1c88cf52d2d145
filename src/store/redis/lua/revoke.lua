-- Record a revocation, bump the epoch every replica polls, and tell the
-- subscribed replicas at once. A revocation is never shortened, and one
-- that changes nothing (already revoked at least as long) writes and
-- broadcasts nothing.
-- KEYS[1] sorted set (jti -> accepted-until, or sub -> cut-off iat)  KEYS[2] epoch counter
-- ARGV[1] member  ARGV[2] score (the larger of it and any existing one is kept)
-- ARGV[3] entries scored below this are dropped (expired jtis); '' keeps all
-- ARGV[4] key ttl seconds  ARGV[5] channel  ARGV[6] message
-- Returns the new epoch, or 0 when nothing changed.
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if cur and tonumber(cur) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return epoch
