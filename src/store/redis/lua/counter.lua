-- Global in-flight reservation counter on a cluster, where it cannot share a
-- script with the subject's keys. Never goes below zero.
-- KEYS[1] counter  ARGV[1] delta  ARGV[2] ttl ms
local n = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local d = tonumber(ARGV[1])
if n + d < 0 then
  d = -n
end
if d ~= 0 then
  redis.call('INCRBY', KEYS[1], d)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n + d
