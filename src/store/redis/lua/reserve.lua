-- Reserve a worst case against every budget at once, or nothing.
-- KEYS[1] budget hash, KEYS[2] (absent on a cluster) global in-flight counter
-- ARGV[1] minute index  ARGV[2] day index  ARGV[3] ms into the minute
-- ARGV[4] tokens        ARGV[5] usd
-- ARGV[6] tokens_per_minute or -1   ARGV[7] tokens_per_day or -1   ARGV[8] usd_per_day or ''
-- ARGV[9] budget ttl ms ARGV[10] in-flight counter ttl ms
-- Returns {code, c, p}: code 0 reserved, 1 tokens_per_minute, 2 tokens_per_day, 3 usd_per_day;
-- c and p are the minute counters after the call (the caller derives remaining / retry-after).
local b = load_budget(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
local refused = budget_refusal(b, ARGV)
if refused ~= 0 then
  return {refused, b.c, b.p}
end
local tokens = tonumber(ARGV[4])
b.c = b.c + tokens
b.t = b.t + tokens
b.u = b.u + tonumber(ARGV[5])
save_budget(KEYS[1], b, ARGV[9])
if KEYS[2] then
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[10])
end
return {0, b.c, b.p}
