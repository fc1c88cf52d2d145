-- The unused part of an ended lease (lease.lua), given back: its unused
-- requests leave the sliding log, its free slots the concurrency counter, its
-- unused tokens and dollars the windows they were taken in (when those are
-- still current). Loaded after log.lua and budget.lua.
-- KEYS[1] sliding request log  KEYS[2] concurrency counter  KEYS[3] budget hash
-- KEYS[4] the log's weights
-- ARGV[1] lease id  ARGV[2] requests used  ARGV[3] requests granted
--   (both 0: no request part)
-- ARGV[4] free slots  ARGV[5] slot counter ttl ms
-- ARGV[6] '1' a budget part: ARGV[7] minute now  ARGV[8] day now
--   ARGV[9] lease minute  ARGV[10] lease day  ARGV[11] tokens unused
--   ARGV[12] usd unused
-- Returns 1.
local used = tonumber(ARGV[2])
local granted = tonumber(ARGV[3])
if granted > used then
  log_shrink(KEYS[1], KEYS[4], ARGV[1], granted, used)
end
local free = tonumber(ARGV[4])
if free > 0 then
  local held = redis.call('DECRBY', KEYS[2], free)
  if held > 0 then
    redis.call('PEXPIRE', KEYS[2], ARGV[5])
  else
    redis.call('DEL', KEYS[2])
  end
end
if ARGV[6] == '1' then
  local b = load_budget(KEYS[3], tonumber(ARGV[7]), tonumber(ARGV[8]))
  if not b.new then
    local lm = tonumber(ARGV[9])
    local ld = tonumber(ARGV[10])
    local back = tonumber(ARGV[11])
    if lm == b.m then
      b.c = math.max(b.c - back, 0)
    elseif lm + 1 == b.m then
      b.p = math.max(b.p - back, 0)
    end
    if ld == b.d then
      b.t = math.max(b.t - back, 0)
      b.u = math.max(b.u - tonumber(ARGV[12]), 0)
    end
    save_budget(KEYS[3], b, nil)
  end
end
return 1
