-- Admission: sliding 60 s request log plus a concurrency slot, all or nothing.
-- Loaded after log.lua.
-- KEYS[1] sliding log (sorted set: member unique per admission, score = admission ms)
-- KEYS[2] concurrency counter  KEYS[3] the log's weights (log.lua)
-- ARGV[1] now ms            ARGV[2] window start: entries scored at or below it have left
-- ARGV[3] requests_per_minute, -1 for none
-- ARGV[4] max_concurrent, -1 for none
-- ARGV[5] member for this admission (unique)
-- ARGV[6] log ttl ms        ARGV[7] slot counter ttl ms
-- Returns {0, remaining requests or -1} | {1, oldest admission ms} | {2}
local rpm = tonumber(ARGV[3])
local maxc = tonumber(ARGV[4])
local count = 0
if rpm >= 0 then
  count = log_count(KEYS[1], KEYS[3], ARGV[2])
  if count >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {1, oldest[2] or ARGV[1]}
  end
end
if maxc >= 0 then
  -- Taken first and given back when over: one call fewer on the common path.
  local held = redis.call('INCR', KEYS[2])
  if held > maxc then
    if held > 1 then
      redis.call('DECR', KEYS[2])
    else
      redis.call('DEL', KEYS[2])
    end
    return {2}
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
if rpm >= 0 then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  return {0, rpm - count - 1}
end
return {0, -1}
