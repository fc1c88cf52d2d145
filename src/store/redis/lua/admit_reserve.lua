-- Admission and reservation in one round trip: admit.lua, then, when
-- admitted, reserve.lua, exactly as the two scripts called in a row (a refused
-- reservation keeps the admission). Loaded after budget.lua with the two
-- scripts wrapped as `admit(KEYS, ARGV)` and `reserve(KEYS, ARGV)`.
-- KEYS[1..3] admit's keys, KEYS[4..] reserve's (one or two)
-- ARGV[1..7] admit's arguments, ARGV[8..17] reserve's
-- Returns {admit reply} | {admit reply, reserve reply}
local a = admit({KEYS[1], KEYS[2], KEYS[3]}, {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]})
if a[1] ~= 0 then
  return {a}
end
local rargv = {}
for i = 8, 17 do
  rargv[i - 7] = ARGV[i]
end
return {a, reserve({KEYS[4], KEYS[5]}, rargv)}
