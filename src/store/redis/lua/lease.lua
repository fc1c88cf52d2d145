-- A replica's lease: a slice of a subject's remaining allowance, taken in one
-- step so the slices of every replica never add up to more than a limit
-- (src/store/leased/, docs/redis-store.md "Leases"). Each part is taken only
-- when asked for; each is sized by the caller's demand but never more than
-- half of what remains, so slices shrink near a limit and none is taken once
-- it is reached. Loaded after log.lua and budget.lua.
-- KEYS[1] sliding request log  KEYS[2] concurrency counter  KEYS[3] budget hash
-- KEYS[4] the log's weights
-- ARGV[1] now ms  ARGV[2] window start (entries at or below it have left)
-- ARGV[3] requests_per_minute or -1  ARGV[4] max_concurrent or -1
--   (both -1: no request part)
-- ARGV[5] lease id  ARGV[6] lease end ms: the score of its requests (one
--   member `<id>*<n>`, log.lua), so they stay in the window at least 60 s
--   after any use of them
-- ARGV[7] requests wanted  ARGV[8] slots wanted
-- ARGV[9] log ttl ms  ARGV[10] slot counter ttl ms
-- ARGV[11] '1' a budget part follows
-- ARGV[12..21] reserve.lua's arguments for this request's own need
-- ARGV[22] tokens wanted (at least the need)  ARGV[23] usd wanted
-- ARGV[24] '1': first give back the subject's previous slice with
--   lease_return.lua's arguments ARGV[25..36] (so its unused part is not
--   counted against this lease)
-- Returns {1, oldest admission ms} | {2}: requests or slots refused, nothing
--   taken
--   | {0, requests granted, requests remaining before, slots granted,
--      budget reply or false}
-- budget reply: {code, c, p} refused (reserve.lua's codes; the request part
--   stands) | {0, c, p, tokens granted, usd granted as %.17g}
local function half_up(n)
  return math.max(1, math.ceil(n / 2))
end

if ARGV[24] == '1' then
  local back = {}
  for i = 25, 36 do
    back[i - 24] = ARGV[i]
  end
  lease_return(KEYS, back)
end

local rpm = tonumber(ARGV[3])
local maxc = tonumber(ARGV[4])
local req_grant = 0
local req_before = -1
local slot_grant = 0
if rpm >= 0 then
  req_before = rpm - log_count(KEYS[1], KEYS[4], ARGV[2])
  if req_before < 1 then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {1, oldest[2] or ARGV[1]}
  end
  req_grant = math.min(tonumber(ARGV[7]), half_up(req_before))
end
local held = 0
if maxc >= 0 then
  held = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if held < 0 then
    held = 0
  end
  if held >= maxc then
    return {2}
  end
  slot_grant = math.min(tonumber(ARGV[8]), half_up(maxc - held))
  redis.call('SET', KEYS[2], string.format('%d', held + slot_grant), 'PX', ARGV[10])
end
if req_grant > 0 then
  log_add(KEYS[1], KEYS[4], ARGV[6], ARGV[5], req_grant, tonumber(ARGV[9]))
end
local budget = false
if ARGV[11] == '1' then
  local bargv = {}
  for i = 12, 21 do
    bargv[i - 11] = ARGV[i]
  end
  local b = load_budget(KEYS[3], tonumber(bargv[1]), tonumber(bargv[2]))
  local refused = budget_refusal(b, bargv)
  if refused ~= 0 then
    budget = {refused, b.c, b.p}
  else
    local need_t = tonumber(bargv[4])
    local need_u = tonumber(bargv[5])
    local tpm = tonumber(bargv[6])
    local tpd = tonumber(bargv[7])
    -- What is left under the tightest token limit, and under the dollars.
    local left_t = nil
    if tpm >= 0 then
      local into = tonumber(bargv[3]) / 60000
      left_t = tpm - (math.max(b.p, 0) * (1 - into) + math.max(b.c, 0))
    end
    if tpd >= 0 then
      local d = tpd - math.max(b.t, 0)
      if left_t == nil or d < left_t then
        left_t = d
      end
    end
    local grant_t = math.max(need_t, tonumber(ARGV[22]))
    if left_t ~= nil then
      grant_t = math.max(need_t, math.min(grant_t, math.floor(left_t / 2)))
    end
    local grant_u = math.max(need_u, tonumber(ARGV[23]))
    if bargv[8] ~= '' then
      grant_u = math.max(need_u, math.min(grant_u, (tonumber(bargv[8]) - math.max(b.u, 0)) / 2))
    end
    b.c = b.c + grant_t
    b.t = b.t + grant_t
    b.u = b.u + grant_u
    save_budget(KEYS[3], b, bargv[9])
    budget = {0, b.c, b.p, grant_t, string.format('%.17g', grant_u)}
  end
end
return {0, req_grant, req_before, slot_grant, budget}
