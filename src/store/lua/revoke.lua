-- Record a revocation, bump the epoch every replica polls, and tell the
-- subscribed replicas at once.
-- KEYS[1] sorted set (jti -> exp, or sub -> cut-off iat)  KEYS[2] epoch counter
-- ARGV[1] member  ARGV[2] score  ARGV[3] 'max' keeps the larger score, 'set' replaces
-- ARGV[4] entries scored below this are dropped (expired jtis); '' keeps all
-- ARGV[5] key ttl seconds  ARGV[6] channel  ARGV[7] message
-- Returns the new epoch.
if ARGV[3] == 'max' then
  local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if (not cur) or tonumber(cur) < tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  end
else
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
if ARGV[4] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[4])
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return epoch
