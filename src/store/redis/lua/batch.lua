-- Group commit (see src/store/redis/batch.rs): several calls of the
-- per-request scripts in one round trip, each run exactly as if called alone,
-- in order. Loaded after budget.lua with admit.lua, reserve.lua,
-- admit_reserve.lua, admit_reserve_pair.lua, finish.lua, lease.lua and
-- lease_return.lua wrapped as functions
-- of (KEYS, ARGV).
-- ARGV[1] number of calls n
-- ARGV[2 + 3(i-1) .. 4 + 3(i-1)] call i: script ('a' 'r' 'ar' 'arp' 'f' 'l' 'lr'), key count, argument count
-- ARGV[2 + 3n ..] every call's arguments, in order; KEYS: every call's keys, in order
-- Returns one {1, reply} per call, or {0, error message} for a call whose
-- script raised an error (the other calls still run).
local scripts = {
  a = admit, r = reserve, ar = admit_reserve, arp = admit_reserve_pair, f = finish,
  l = lease, lr = lease_return,
}
local n = tonumber(ARGV[1])
local kpos = 1
local apos = 2 + 3 * n
local out = {}
for i = 1, n do
  local h = 2 + 3 * (i - 1)
  local script = scripts[ARGV[h]]
  local nk = tonumber(ARGV[h + 1])
  local na = tonumber(ARGV[h + 2])
  local k = {}
  for j = 1, nk do
    k[j] = KEYS[kpos + j - 1]
  end
  local a = {}
  for j = 1, na do
    a[j] = ARGV[apos + j - 1]
  end
  kpos = kpos + nk
  apos = apos + na
  if script == nil then
    out[i] = {0, 'unknown script ' .. tostring(ARGV[h])}
  else
    local ok, r = pcall(script, k, a)
    if ok then
      out[i] = {1, r}
    elseif type(r) == 'table' then
      out[i] = {0, tostring(r.err or r.msg or 'script error')}
    else
      out[i] = {0, tostring(r)}
    end
  end
end
return out
