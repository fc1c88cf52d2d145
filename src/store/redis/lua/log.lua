-- The sliding request log (`req`, a sorted set scored by when each member
-- leaves the window, less 60 s) and its weights (`reqw`). A member counts
-- one request, except a lease's, named `<lease id>*<n>`, which counts its
-- `n` requests: a lease adds one member however many requests it takes,
-- instead of one per request (ZADD's work and the Lua building its
-- arguments were most of a lease's cost in redis-server). `reqw` holds the
-- sum of (n - 1) over the weighted members still in the log, so the count
-- stays one ZCARD plus one GET. Every script counting the log is loaded
-- after this file.

-- The weight a member carries (1 unless it is a lease's).
local function log_weight(member)
  local w = string.match(member, '%*(%d+)$')
  return w and tonumber(w) or 1
end

-- Drops the members at or below `start` and returns how many requests the
-- log counts after that.
local function log_count(log, weights, start)
  local held = tonumber(redis.call('GET', weights) or '0') or 0
  local extra = held
  if held > 0 then
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', log, '-inf', start)) do
      extra = extra - (log_weight(m) - 1)
    end
  end
  redis.call('ZREMRANGEBYSCORE', log, '-inf', start)
  local card = redis.call('ZCARD', log)
  -- An empty log carries no weight: this also clears weights left by a log
  -- that expired or was deleted before them.
  if card == 0 or extra < 0 then
    extra = 0
  end
  if extra ~= held then
    if extra == 0 then
      redis.call('DEL', weights)
    else
      redis.call('SET', weights, string.format('%d', extra), 'KEEPTTL')
    end
  end
  return card + extra
end

-- Adds `n` requests as one member scored `score` (its lease's end) and
-- keeps the log `ttl` ms; the weights a second longer, so they outlive
-- every member they count.
local function log_add(log, weights, score, member, n, ttl)
  redis.call('ZADD', log, score, member .. '*' .. n)
  redis.call('PEXPIRE', log, ttl)
  if n > 1 then
    redis.call('INCRBY', weights, n - 1)
    redis.call('PEXPIRE', weights, ttl + 1000)
  end
end

-- Takes back `n - keep` of the `n` requests of member `<member>*<n>`
-- (`keep` 0: the whole member). A member already gone is left so.
local function log_shrink(log, weights, member, n, keep)
  local name = member .. '*' .. n
  local score = redis.call('ZSCORE', log, name)
  if not score then
    return
  end
  redis.call('ZREM', log, name)
  if keep > 0 then
    redis.call('ZADD', log, score, member .. '*' .. keep)
  end
  local drop = n - math.max(keep, 1)
  if drop > 0 then
    local extra = redis.call('DECRBY', weights, drop)
    if extra <= 0 then
      redis.call('DEL', weights)
    end
  end
end
