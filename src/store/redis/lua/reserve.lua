-- Reserve a worst case against every budget at once, or nothing.
-- KEYS[1] budget hash, KEYS[2] (absent on a cluster) global in-flight counter
-- ARGV[1] minute index  ARGV[2] day index  ARGV[3] ms into the minute
-- ARGV[4] tokens        ARGV[5] usd
-- ARGV[6] tokens_per_minute or -1   ARGV[7] tokens_per_day or -1   ARGV[8] usd_per_day or ''
-- ARGV[9] budget ttl ms ARGV[10] in-flight counter ttl ms
-- Returns {code, c, p}: code 0 reserved, 1 tokens_per_minute, 2 tokens_per_day, 3 usd_per_day;
-- c and p are the minute counters after the call (the caller derives remaining / retry-after).
local b = load_budget(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
local tokens = tonumber(ARGV[4])
local usd = tonumber(ARGV[5])
local tpm = tonumber(ARGV[6])
local tpd = tonumber(ARGV[7])
local into = tonumber(ARGV[3]) / 60000
if tpm >= 0 and math.max(b.p, 0) * (1 - into) + math.max(b.c, 0) + tokens > tpm then
  return {1, b.c, b.p}
end
if tpd >= 0 and math.max(b.t, 0) + tokens > tpd then
  return {2, b.c, b.p}
end
if ARGV[8] ~= '' and math.max(b.u, 0) + usd > tonumber(ARGV[8]) then
  return {3, b.c, b.p}
end
b.c = b.c + tokens
b.t = b.t + tokens
b.u = b.u + usd
save_budget(KEYS[1], b, ARGV[9])
if KEYS[2] then
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[10])
end
return {0, b.c, b.p}
