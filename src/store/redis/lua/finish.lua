-- Everything a finished request does, once: release its slot, settle its
-- reservation, add the day's totals. A retried call with the same marker is a
-- no-op, so a caller may retry after a connection error without double counting.
-- KEYS[1] budget hash  KEYS[2] concurrency counter  KEYS[3] usage hash of the day
-- KEYS[4] idempotency marker  KEYS[5] (absent on a cluster) global in-flight counter
-- ARGV[1] marker ttl ms
-- ARGV[2] '1' release a slot        ARGV[3] slot counter ttl ms
-- ARGV[4] '1' settle a reservation, '2' charge usage nothing was reserved for
--   (creates the budget hash when missing; no in-flight counter)
-- ARGV[5] minute now  ARGV[6] day now
-- ARGV[7] reservation minute        ARGV[8] reservation day
-- ARGV[9] token difference (actual - reserved)  ARGV[10] usd difference
-- ARGV[11] budget ttl ms (for a hash a charge creates)
-- ARGV[12] in-flight counter ttl ms: unused (the reservation's expiries
--   stand), kept so the layout does not change
-- ARGV[13] '1' add totals  ARGV[14..18] requests, input_tokens, output_tokens,
--   cache_creation_input_tokens, cache_read_input_tokens  ARGV[19] cost_usd
-- ARGV[20] usage hash expiry (unix ms)
-- Returns 1 when applied, 0 when this marker was already applied.
if not redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end
-- Calls are counted: every one costs redis-server as much as its work, so
-- each step below makes the fewest on its common path.
if ARGV[2] == '1' then
  local held = redis.call('DECR', KEYS[2])
  if held > 0 then
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
  else
    -- Released to zero, or the key had expired (DECR made it -1).
    redis.call('DEL', KEYS[2])
  end
end
if ARGV[4] == '1' or ARGV[4] == '2' then
  local charge = ARGV[4] == '2'
  local b = load_budget(KEYS[1], tonumber(ARGV[5]), tonumber(ARGV[6]))
  -- A hash gone (expired, Redis lost its data) has no reservation to
  -- settle; a charge makes it.
  if charge or not b.new then
    local rm = tonumber(ARGV[7])
    local rd = tonumber(ARGV[8])
    local diff = tonumber(ARGV[9])
    if rm == b.m then
      b.c = math.max(b.c + diff, 0)
    elseif rm + 1 == b.m then
      b.p = math.max(b.p + diff, 0)
    end
    if rd == b.d then
      b.t = math.max(b.t + diff, 0)
      b.u = math.max(b.u + tonumber(ARGV[10]), 0)
    end
    -- Its reservation set a 26 h expiry moments (a request's life) ago.
    save_budget(KEYS[1], b, (b.new and ARGV[11]) or nil)
  end
  if KEYS[5] and not charge then
    -- Kept alive by every reservation's PEXPIRE; below zero only when it
    -- had expired (or was 0), which reads as 0.
    if redis.call('DECR', KEYS[5]) < 0 then
      redis.call('DEL', KEYS[5])
    end
  end
end
if ARGV[13] == '1' then
  local fields = {'requests', 'input_tokens', 'output_tokens', 'cache_creation_input_tokens', 'cache_read_input_tokens'}
  -- The expiry is a fixed instant per day key: set when the hash is made
  -- (its request count is then this call's own).
  local made = true
  for i, f in ipairs(fields) do
    if ARGV[13 + i] ~= '0' then
      local v = redis.call('HINCRBY', KEYS[3], f, ARGV[13 + i])
      if i == 1 then
        made = v == tonumber(ARGV[14])
      end
    end
  end
  -- Added here rather than with HINCRBYFLOAT so the sum is the same f64
  -- addition the in-process store does.
  local cost = tonumber(redis.call('HGET', KEYS[3], 'cost_usd') or '0') or 0
  redis.call('HSET', KEYS[3], 'cost_usd', string.format('%.17g', cost + tonumber(ARGV[19])))
  if made then
    redis.call('PEXPIREAT', KEYS[3], ARGV[20])
  end
end
return 1
