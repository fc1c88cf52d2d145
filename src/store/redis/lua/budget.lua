-- Shared by reserve.lua and finish.lua (prepended before loading): the
-- per-subject budget hash, rolled to the caller's minute and day.
-- Fields: m minute index, c tokens this minute, p tokens previous minute,
--         d day index, t tokens today, u usd today.
-- Windows only roll forward, so a replica whose clock is slightly behind
-- cannot reset a window another replica already counted in.
-- b.new: the hash did not exist (expired, or never written).
local function load_budget(key, minute, day)
  local h = redis.call('HMGET', key, 'm', 'c', 'p', 'd', 't', 'u')
  local b = {
    m = tonumber(h[1]), c = tonumber(h[2]) or 0, p = tonumber(h[3]) or 0,
    d = tonumber(h[4]), t = tonumber(h[5]) or 0, u = tonumber(h[6]) or 0,
  }
  b.new = b.m == nil
  if b.m == nil or minute > b.m then
    if b.m ~= nil and minute == b.m + 1 then b.p = b.c else b.p = 0 end
    b.c = 0
    b.m = minute
  end
  if b.d == nil or day > b.d then
    b.d = day
    b.t = 0
    b.u = 0
  end
  return b
end

-- Integers are written with %d and dollars with %.17g so that values read
-- back are bit-identical to what the in-process store would hold. Without a
-- ttl the key keeps the one its last reservation set.
local function save_budget(key, b, ttl)
  redis.call('HSET', key,
    'm', string.format('%d', b.m), 'c', string.format('%d', b.c), 'p', string.format('%d', b.p),
    'd', string.format('%d', b.d), 't', string.format('%d', b.t), 'u', string.format('%.17g', b.u))
  if ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end

-- The first budget a reservation of ARGV[4] tokens and ARGV[5] usd would
-- exceed in `b` (reserve.lua's arguments): 1 tokens_per_minute,
-- 2 tokens_per_day, 3 usd_per_day; 0 when it fits.
local function budget_refusal(b, ARGV)
  local tokens = tonumber(ARGV[4])
  local usd = tonumber(ARGV[5])
  local tpm = tonumber(ARGV[6])
  local tpd = tonumber(ARGV[7])
  local into = tonumber(ARGV[3]) / 60000
  if tpm >= 0 and math.max(b.p, 0) * (1 - into) + math.max(b.c, 0) + tokens > tpm then
    return 1
  end
  if tpd >= 0 and math.max(b.t, 0) + tokens > tpd then
    return 2
  end
  if ARGV[8] ~= '' and math.max(b.u, 0) + usd > tonumber(ARGV[8]) then
    return 3
  end
  return 0
end
