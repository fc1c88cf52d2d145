-- A caller's and its team's admission and reservation in one step (see
-- src/store/pair.rs): admitted only when both scopes admit, reserved only
-- when both scopes' budgets allow, so members' concurrent requests never
-- overspend their team. Loaded after budget.lua with admit.lua and
-- reserve.lua wrapped as `admit(KEYS, ARGV)` and `reserve(KEYS, ARGV)`.
-- Standalone or sentinel Redis only (on a cluster the scopes' keys live in
-- different slots).
-- KEYS[1..3] the caller's admit keys  KEYS[4..6] the team's
-- KEYS[7] the caller's budget hash  KEYS[8] the team's  KEYS[9] in-flight counter
-- ARGV[1..7] the caller's admit arguments  ARGV[8..14] the team's
-- ARGV[15] '1' the caller reserves  ARGV[16] '1' the team reserves
-- ARGV[17..26] the caller's reserve arguments  ARGV[27..36] the team's
-- Returns {1, admit reply}: the caller's admission refused, nothing taken
--   | {2, admit reply}: the team's admission refused, nothing taken
--   | {3 or 4, caller admit reply, team admit reply, reserve reply}: the
--     caller's (3) or team's (4) budget refused; both admissions stand
--   | {0, caller admit reply, team admit reply, caller reserve reply or
--     false, team reserve reply or false}
local function slice(from, n)
  local t = {}
  for i = 1, n do
    t[i] = ARGV[from + i - 1]
  end
  return t
end

-- Gives back exactly what `admit` took with these arguments.
local function unadmit(keys, argv)
  if tonumber(argv[3]) >= 0 then
    redis.call('ZREM', keys[1], argv[5])
  end
  if tonumber(argv[4]) >= 0 and redis.call('DECR', keys[2]) <= 0 then
    redis.call('DEL', keys[2])
  end
end

local user_admit = slice(1, 7)
local ua = admit({KEYS[1], KEYS[2], KEYS[3]}, user_admit)
if ua[1] ~= 0 then
  return {1, ua}
end
local ta = admit({KEYS[4], KEYS[5], KEYS[6]}, slice(8, 7))
if ta[1] ~= 0 then
  unadmit({KEYS[1], KEYS[2]}, user_admit)
  return {2, ta}
end
local user_res = ARGV[15] == '1' and slice(17, 10) or nil
local team_res = ARGV[16] == '1' and slice(27, 10) or nil
-- Both budgets are checked before either is taken.
for i, r in ipairs({{user_res, KEYS[7], 3}, {team_res, KEYS[8], 4}}) do
  if r[1] then
    local b = load_budget(r[2], tonumber(r[1][1]), tonumber(r[1][2]))
    local refused = budget_refusal(b, r[1])
    if refused ~= 0 then
      return {r[3], ua, ta, {refused, b.c, b.p}}
    end
  end
end
local ur = false
local tr = false
if user_res then
  ur = reserve({KEYS[7], KEYS[9]}, user_res)
end
if team_res then
  tr = reserve({KEYS[8], KEYS[9]}, team_res)
end
return {0, ua, ta, ur, tr}
