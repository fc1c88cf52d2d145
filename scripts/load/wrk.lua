-- wrk script for scripts/load.sh: POSTs the same 4.5 KB chat body with a
-- bearer token per request.
--
-- Environment (read in each wrk thread):
--   BENCH_BODY        file with the request body (JSON)
--   BENCH_PATH        request path (default /v1/messages)
--   BENCH_TOKENS      file, one token per line: the reused pool (token i
--                     belongs to user i % users; each request picks one at random)
--   BENCH_FRESH       optional file of never-seen tokens
--   BENCH_FRESH_PCT   percentage of requests that use a fresh token (0..100)
--   BENCH_FRESH_FIRST first line (0-based) of BENCH_FRESH this run may use
--   BENCH_FRESH_COUNT how many lines from there this run may use
--   BENCH_SEQUENTIAL  1: no pool; walk BENCH_FRESH (FIRST, COUNT) once, one
--                     token per request, and stop each thread when its share
--                     is used up (memory test: N distinct users, once each)
--   BENCH_THREADS     the -t value (threads split the fresh range between them)
--   BENCH_ROUND_ROBIN 1: walk the pool in order instead of at random (warm-up:
--                     every pool token is seen once within #pool requests),
--                     from line BENCH_RR_START (0-based)
--
-- done() prints one line: BENCH_RESULT {json}.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local function read_lines(path)
  local out = {}
  if path == nil or path == "" then return out end
  local f = assert(io.open(path, "r"))
  for line in f:lines() do
    if #line > 0 then out[#out + 1] = line end
  end
  f:close()
  return out
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local body, path
local pool_reqs = {}
local fresh = {}
local fresh_next = 1
local fresh_pct = 0
local sequential = false
local round_robin = false
local rr_next = 1
fresh_used = 0   -- global: read by done() through thread:get
fresh_missed = 0

local function build(token)
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json",
    ["anthropic-version"] = "2023-06-01",
    ["Authorization"] = "Bearer " .. token,
  }, body)
end

function init(args)
  body = read_file(os.getenv("BENCH_BODY"))
  path = os.getenv("BENCH_PATH") or "/v1/messages"
  local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
  local id = thread_id or 0
  math.randomseed(os.time() * 1000 + id * 7919)
  sequential = os.getenv("BENCH_SEQUENTIAL") == "1"
  fresh_pct = tonumber(os.getenv("BENCH_FRESH_PCT") or "0")

  if not sequential then
    -- Pre-built requests: request() then costs a table lookup.
    for _, t in ipairs(read_lines(os.getenv("BENCH_TOKENS"))) do
      pool_reqs[#pool_reqs + 1] = build(t)
    end
    assert(#pool_reqs > 0, "BENCH_TOKENS is empty")
    round_robin = os.getenv("BENCH_ROUND_ROBIN") == "1"
    local start = tonumber(os.getenv("BENCH_RR_START") or "0")
    rr_next = 1 + (start + math.floor(id * #pool_reqs / nthreads)) % #pool_reqs
  end

  -- This thread's share of the fresh range: every nthreads-th line.
  local fpath = os.getenv("BENCH_FRESH")
  if (sequential or fresh_pct > 0) and fpath and fpath ~= "" then
    local first = tonumber(os.getenv("BENCH_FRESH_FIRST") or "0")
    local count = tonumber(os.getenv("BENCH_FRESH_COUNT") or "0")
    local i = 0
    local f = assert(io.open(fpath, "r"))
    for line in f:lines() do
      if i >= first + count then break end
      if i >= first and (i - first) % nthreads == id and #line > 0 then
        fresh[#fresh + 1] = line
      end
      i = i + 1
    end
    f:close()
  end
end

function request()
  if sequential then
    local t = fresh[fresh_next]
    if t == nil then
      -- Share used up: stop this thread; send something harmless meanwhile.
      wrk.thread:stop()
      t = fresh[#fresh]
    else
      fresh_next = fresh_next + 1
      fresh_used = fresh_used + 1
    end
    return build(t)
  end
  if fresh_pct > 0 and math.random() * 100 < fresh_pct then
    local t = fresh[fresh_next]
    if t ~= nil then
      fresh_next = fresh_next + 1
      fresh_used = fresh_used + 1
      return build(t)
    end
    fresh_missed = fresh_missed + 1
  end
  if round_robin then
    local r = pool_reqs[rr_next]
    rr_next = rr_next % #pool_reqs + 1
    return r
  end
  return pool_reqs[math.random(#pool_reqs)]
end

function done(summary, latency, requests)
  local used, missed = 0, 0
  for _, t in ipairs(threads) do
    used = used + (t:get("fresh_used") or 0)
    missed = missed + (t:get("fresh_missed") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d,"mean_us":%.1f,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"fresh_used":%d,"fresh_missed":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, e.status, e.connect, e.read, e.write, e.timeout, used, missed))
end
