#!/usr/bin/env bash
# Load benchmark for tollgate (issue 5): the gateway with every feature on,
# side by side with a bare Pingora pass-through and the fake provider itself,
# on loopback, interleaved and repeated.
#
#   scripts/load.sh            # throughput + fixed-rate latency (~5 min)
#   scripts/load.sh mem        # 100,000 distinct users within a minute: RSS
#   scripts/load.sh all        # both
#   scripts/load.sh profile    # bare and tollgate under callgrind (instructions
#                              # per request, stable on a noisy machine) or perf
#   DURATION=3 REPEATS=1 LAT_SECONDS=3 scripts/load.sh   # quick check
#
# Targets (TARGETS): direct (nginx), bare (examples/bare_proxy.rs),
# bare_body (bare_proxy with BARE_READ_BODY=1: each body read whole before
# it is proxied, as tollgate must to inspect it; what Pingora charges for
# that path alone),
# tollgate (in-process store), tollgate_redis (private redis-server),
# tollgate_redis_lease (the same Redis with store.lease: 1s),
# tollgate_failover (in-process store; every request first meets a
# deployment answering 529 and fails over to the real one: the cost of one
# failover, to compare with tollgate), tollgate_ledger (in-process store and
# usage.postgres_url: every record also goes to a private PostgreSQL
# through the spool; what the ledger costs the request path),
# tollgate_nojournal (in-process store, usage lines on stdout and no
# journal_dir, so the crash journal is off: what the journal costs),
# tollgate_guard (in-process store, the request guard on with every
# built-in over all text, action block: what scanning costs),
# bare_tls (bare_proxy with a TLS listener: BARE_TLS_CERT/BARE_TLS_KEY) and
# tollgate_tls (the tollgate target's config with the TLS listener form,
# `listen: [{ addr, tls: { cert, key } }]`): both serve a self-signed
# certificate for 127.0.0.1 made with openssl once per run (under the run
# directory), offer ALPN h2 and http/1.1, and wrk drives them over https://
# (HTTP/1.1 over TLS, keep-alive, so few handshakes): tollgate_tls ÷ bare_tls
# is the gateway's cost when both sides pay the same TLS cost. The
# fixed-rate latency runs cover them too (their added latency over direct
# includes TLS); the profile mode does not. A target that cannot start
# (e.g. a build without the Redis store) is reported as n/a instead of
# failing the run.
#
# Prints a markdown table and writes it to target/load/results.md; the run's
# configs, logs and raw numbers stay in target/load/run/. Everything it
# starts is stopped on exit. See docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() {
  sed -n '2,/^set -euo/p' "$ROOT/scripts/load.sh" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Knobs (environment):
  DURATION=10 REPEATS=3 WARMUP=3    seconds per wrk run, interleaved repeats, warm-up seconds
  CONNECTIONS=50 WRK_THREADS=2       wrk load
  USERS=500 TOKENS=2000              reused token pool (token i belongs to user i % USERS)
  FRESH_PCT=1 FRESH_PER_RUN=3000     % of requests with a never-seen token; tokens set aside per run
  RATE=100 LAT_SECONDS=10 LAT_REPEATS=1   fixed-rate latency runs (JSON and SSE); LAT_SECONDS=0 skips them
  TARGETS="direct bare bare_body tollgate bare_tls tollgate_tls tollgate_redis tollgate_redis_lease tollgate_failover tollgate_ledger tollgate_nojournal tollgate_guard"
  THREADS=2                          server.threads of tollgate = BARE_THREADS of bare_proxy
  MEM_USERS=100000 MEM_ROUNDS=1 MEM_WAIT=0   memory test: users, rounds, idle seconds after each round
  PER_USER_LABELS=true               metrics.per_user_labels (false only to diagnose its cost)
  SKIP_BUILD=0 SKIP_INSTALL=0 NOTE="..."     NOTE is printed above the tables
  PROFILER=callgrind|perf|stat PROFILE_TARGETS="bare tollgate" PROFILE_SECONDS=20
  PROFILE_CONNECTIONS=4 PROFILE_WARMUP=10   (callgrind; perf samples at CONNECTIONS;
                                     stat counts CPU time, context switches and
                                     system calls per request, at CONNECTIONS);
  PERF_RECORD="-e cpu-clock -F 999"  what PROFILER=perf samples (e.g. "-e sched:sched_wakeup -c 1")
  CALLGRIND_OPTS=""                  more callgrind options, e.g. "--cache-sim=yes --branch-sim=yes"
                                     (simulated cache misses and mispredicted branches, where
                                     the VM has no hardware counters; ~2x slower)
  PROFILE_TARGETS may also name bare_body, tollgate_nojournal, or tollgate_redis / tollgate_redis_lease (start a private redis-server)
EOF
}

MODE=${1:-bench}
case "$MODE" in
  bench | mem | all | profile) ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
WARMUP=${WARMUP:-3}
CONNECTIONS=${CONNECTIONS:-50}
WRK_THREADS=${WRK_THREADS:-2}
USERS=${USERS:-500}
TOKENS=${TOKENS:-2000}
FRESH_PCT=${FRESH_PCT:-1}
FRESH_PER_RUN=${FRESH_PER_RUN:-3000}
RATE=${RATE:-100}
LAT_SECONDS=${LAT_SECONDS:-10}
LAT_REPEATS=${LAT_REPEATS:-1}
TARGETS=${TARGETS:-direct bare bare_body tollgate bare_tls tollgate_tls tollgate_redis tollgate_redis_lease tollgate_failover tollgate_ledger tollgate_nojournal tollgate_guard}
THREADS=${THREADS:-2}
MEM_USERS=${MEM_USERS:-100000}
MEM_ROUNDS=${MEM_ROUNDS:-1}
MEM_WAIT=${MEM_WAIT:-0}
MEM_MAX_SECONDS=${MEM_MAX_SECONDS:-300}
PER_USER_LABELS=${PER_USER_LABELS:-true}
PROFILER=${PROFILER:-callgrind}
PROFILE_TARGETS=${PROFILE_TARGETS:-bare tollgate}
PROFILE_SECONDS=${PROFILE_SECONDS:-20}
PROFILE_CONNECTIONS=${PROFILE_CONNECTIONS:-4}
PROFILE_WARMUP=${PROFILE_WARMUP:-10}
PERF_RECORD=${PERF_RECORD:--e cpu-clock -F 999}
CALLGRIND_OPTS=${CALLGRIND_OPTS:-}
SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_INSTALL=${SKIP_INSTALL:-0}
NOTE=${NOTE:-}

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
OUT=$TARGET_DIR/load
RUN=$OUT/run
LOAD=$ROOT/scripts/load
TOOL=(python3 "$LOAD/loadtool.py")
BODY=$LOAD/request_anthropic.json
LUA=$LOAD/wrk.lua
RUNS=$RUN/runs.jsonl

log() { printf '[load %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- install
install_missing() {
  local need=()
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  command -v cmake >/dev/null 2>&1 || need+=(cmake) # pingora's zlib-ng build
  command -v openssl >/dev/null 2>&1 || need+=(openssl) # the TLS targets' certificate
  if [ "$MODE" = profile ]; then
    case "$PROFILER" in
      callgrind) command -v valgrind >/dev/null 2>&1 || need+=(valgrind) ;;
      perf | stat) command -v perf >/dev/null 2>&1 || need+=(linux-perf) ;;
      *) die "PROFILER must be callgrind, perf or stat" ;;
    esac
  fi
  [ ${#need[@]} -eq 0 ] && return 0
  [ "$SKIP_INSTALL" = 1 ] && die "missing ${need[*]} (SKIP_INSTALL=1)"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  # Package lists can be empty on a fresh machine: update only then.
  local p
  for p in "${need[@]}"; do
    if ! apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
      log "apt-get update (no candidate for $p)"
      $sudo apt-get update -qq
      break
    fi
  done
  log "installing: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
}

# ---------------------------------------------------------------- processes
PIDS=()
# The parent pid of a process, empty when it is gone.
parent_of() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo "$2"
}
cleanup() {
  local rc=$? pid i
  trap - EXIT INT TERM
  # Only our own children: a recorded pid that exited may have been reused.
  for pid in "${PIDS[@]}"; do
    [ "$(parent_of "$pid")" = "$$" ] && kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    for i in $(seq 1 50); do
      [ "$(parent_of "$pid")" = "$$" ] && alive "$pid" || break
      sleep 0.1
    done
    [ "$(parent_of "$pid")" = "$$" ] && kill -KILL "$pid" 2>/dev/null
  done
  wait 2>/dev/null || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_postgres: a private PostgreSQL for tollgate_ledger on $P_PG under
# $RUN/pg (as the postgres user when run as root: initdb refuses root),
# stopped by cleanup through pg_ctl.
PG_DATA=""
start_postgres() {
  local bin="" d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && bin=$d; done
  [ -n "$bin" ] || return 1
  local as=()
  [ "$(id -u)" -eq 0 ] && as=(runuser -u postgres --)
  local dir=$RUN/pg
  if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$RUN"; then
    dir=$(mktemp -d /tmp/tollgate-load-pg.XXXXXX)
  fi
  mkdir -p "$dir/data"
  chmod 755 "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir/data"
  PG_DATA=$dir/data
  "${as[@]}" "$bin/initdb" -D "$PG_DATA" -A trust -U postgres >"$dir/initdb.log" 2>&1 || return 1
  PG_CTL=("${as[@]}" "$bin/pg_ctl")
  "${PG_CTL[@]}" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -t 60 \
    -o "-p $P_PG -c listen_addresses=127.0.0.1 -k $PG_DATA" start >/dev/null
}
stop_postgres() {
  [ -n "$PG_DATA" ] && [ -f "$PG_DATA/postmaster.pid" ] &&
    "${PG_CTL[@]}" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1
  return 0
}
trap 'rc=$?; stop_postgres; (exit $rc); cleanup' EXIT

# run_child CMD...: runs CMD and waits for it, as a child the trap can stop
# (bash runs traps only between foreground commands, not during one).
run_child() {
  "$@" &
  local p=$!
  PIDS+=("$p")
  wait "$p"
}

# start NAME CMD...: runs CMD in the background, logs to $RUN/NAME.log,
# sets STARTED to its pid.
start() {
  local name=$1
  shift
  "$@" >"$RUN/$name.log" 2>&1 &
  STARTED=$!
  PIDS+=("$STARTED")
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

# utime + stime of a process in clock ticks (dead threads included).
cpu_ticks() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo ""; return; }
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $((${12} + ${13}))
}
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null; }

# tls_opt TARGET: loadtool's TLS option for a target served over https://
# (the client checks the run's certificate).
tls_opt() {
  [ "${SCHEME[$1]:-http}" = https ] && echo "--tls-ca=$TLS_DIR/cert.pem"
  return 0
}

# smoke NAME ADDR [retries]: one real request through ADDR until it succeeds
# (over TLS when SCHEME[NAME] is https).
smoke() {
  local addr=$2 tries=${3:-50} i tls=()
  [ -n "$(tls_opt "$1")" ] && tls=("$(tls_opt "$1")")
  for i in $(seq 1 "$tries"); do
    if "${TOOL[@]}" smoke "${tls[@]}" --addr "$addr" --body "$BODY" --token-file "$RUN/tokens.txt" 2>"$RUN/smoke-$1.err" &&
      "${TOOL[@]}" smoke "${tls[@]}" --stream --addr "$addr" --body "$BODY" --token-file "$RUN/tokens.txt" 2>>"$RUN/smoke-$1.err"; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

# json_add KEY=VALUE...: merges numbers/strings into the JSON object on stdin.
# Requests the fake provider has answered so far (nginx stub_status: the
# third number of its third line).
requests_served() {
  python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode().splitlines()[2].split()[2])' \
    "http://127.0.0.1:$P_NGINX/_status"
}

json_add() {
  python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
for kv in sys.argv[1:]:
    k, _, v = kv.partition("=")
    if v == "":
        d[k] = None
        continue
    try:
        d[k] = json.loads(v)
    except ValueError:
        d[k] = v
print(json.dumps(d))' "$@"
}

# ---------------------------------------------------------------- configs
# tollgate_config FILE LISTEN_PORT ADMIN_PORT METRICS_PORT REDIS_URL|null USAGE_LOG [failover]
tollgate_config() {
  # Every process needs its own journal (a shared one is refused); a log on
  # stdout has none.
  local journal=""
  [ "$6" != '"-"' ] && journal="
  journal_dir: $RUN/journal-$2"
  cat >"$1" <<EOF
# generated by scripts/load.sh: every feature on, limits far above the load
listen: 127.0.0.1:$2
admin_listen: 127.0.0.1:$3
metrics_listen: 127.0.0.1:$4
server:
  threads: $THREADS
  pid_file: $RUN/tollgate-$2.pid
  upgrade_sock: $RUN/tollgate-$2-upgrade.sock
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 2
identity:
  issuer: tollgate
  audience: llm-gateway
  algorithms: [RS256]
  keys:
    - { kid: k1, public_key: $KEYS/public.pem }
  private_key: $KEYS/private.pem
  signing_kid: k1
  leeway_seconds: 30
  default_ttl: 24h
store:
  redis_url: $5
  on_error: fail_closed${9:+
  lease: $9}
limits:
  default_tier: user
  tiers:
    user: { requests_per_minute: 1000000, tokens_per_minute: 1000000000000, tokens_per_day: 1000000000000000, usd_per_day: 1000000000, max_concurrent: 10000, models: ["claude-*", "gpt-*"] }
    admin: { requests_per_minute: 1000000, max_concurrent: 10000 }
  default_max_tokens: 4096
  max_body_bytes: 10485760
  client_timeout: 30s
providers:
  - name: anthropic
    kind: anthropic
    base_url: http://127.0.0.1:$P_NGINX
    api_key_env: TOLLGATE_BENCH_PROVIDER_KEY
    routes: [/v1/messages]
    connect_timeout_seconds: 5
    timeout_seconds: 60
  - name: openai
    kind: openai
    base_url: http://127.0.0.1:$P_NGINX
    api_key_env: TOLLGATE_BENCH_PROVIDER_KEY
    routes: [/v1/chat/completions, /v1/responses, /v1/embeddings]
usage:
  log_path: $6$journal${8:+
  postgres_url: $8
  spool_dir: $RUN/spool-$2}
  drain_on_disconnect: 30s
  prices:
    claude-sonnet-4-5: { input: 3.0, output: 15.0, cache_read: 0.3, cache_write: 3.75 }
    gpt-4o: { input: 2.5, output: 10.0, cache_read: 1.25 }
metrics:
  per_user_labels: $PER_USER_LABELS
EOF
  if [ "${7:-}" = guard ]; then
    cat >>"$1" <<EOF
guard:
  scan: all
  rules:
    - { name: injection, builtin: prompt_injection, action: block }
    - { name: secrets, builtin: secrets, action: block }
    - { name: pii, builtin: pii, action: redact }
EOF
  fi
  if [ "${7:-}" = failover ]; then
    # A deployment that is always overloaded, tried first; no cooldown, so
    # every request fails over once.
    cat >>"$1" <<EOF
models:
  claude-sonnet-4-5: { deployments: [busy, anthropic] }
routing:
  cooldown: 0s
EOF
    python3 - "$1" "$P_NGINX" <<'PY'
import sys
path, port = sys.argv[1], sys.argv[2]
text = open(path).read()
busy = (
    "  - name: busy\n"
    "    kind: anthropic\n"
    f"    base_url: http://127.0.0.1:{port}/busy\n"
    "    api_key_env: TOLLGATE_BENCH_PROVIDER_KEY\n"
    "    routes: [/v1/messages]\n"
)
open(path, "w").write(text.replace("usage:\n", busy + "usage:\n", 1))
PY
  fi
}

# start_tollgate NAME CONFIG ADMIN_PORT PROXY_PORT: sets STARTED (pid) or
# UNAVAILABLE (reason) when it does not come up.
start_tollgate() {
  local name=$1 cfg=$2 admin=$3 port=$4 rc=0
  UNAVAILABLE=""
  start "$name" env -u RUST_LOG "$TG" serve -c "$cfg"
  "${TOOL[@]}" wait-http "http://127.0.0.1:$admin/readyz" --timeout 30 --pid "$STARTED" 2>>"$RUN/$name.log" || rc=$?
  if [ $rc -ne 0 ]; then
    UNAVAILABLE="did not start: $(grep -v '^\s*$' "$RUN/$name.log" | tail -n 1 | cut -c1-120 | tr '|' '/')"
    [ $rc -eq 3 ] || UNAVAILABLE="not ready in 30 s"
    kill -TERM "$STARTED" 2>/dev/null || true
    return 1
  fi
  if ! smoke "$name" "127.0.0.1:$port" 10; then
    UNAVAILABLE="smoke request failed: $(tail -n 1 "$RUN/smoke-$name.err" | cut -c1-120 | tr '|' '/')"
    return 1
  fi
}

# tls_listen FILE PORT: the config's `listen: 127.0.0.1:PORT` becomes the
# TLS listener form with the run's certificate.
tls_listen() {
  sed -i "s|^listen: 127.0.0.1:$2\$|listen: [{ addr: 127.0.0.1:$2, tls: { cert: $TLS_DIR/cert.pem, key: $TLS_DIR/key.pem } }]|" "$1"
  grep -q "^listen: \[{ addr: 127.0.0.1:$2, tls:" "$1" || die "could not set the TLS listener in $1"
}

# make_cert: a self-signed ECDSA P-256 certificate for 127.0.0.1 (and
# localhost) in $TLS_DIR, valid 30 days (tollgate check warns within 14).
make_cert() {
  [ -s "$TLS_DIR/cert.pem" ] && return 0
  mkdir -p "$TLS_DIR"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
    -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" >"$TLS_DIR/openssl.log" 2>&1 ||
    die "openssl could not make the TLS certificate: $(tail -n 3 "$TLS_DIR/openssl.log")"
}

# ---------------------------------------------------------------- runs
# SCHEME[target] is https for the TLS targets (unset: http).
declare -A ADDR PID SCHEME

# run_wrk TARGET REPEAT SECONDS FRESH_PCT FRESH_FIRST: REPEAT 0 is a warm-up.
run_wrk() {
  local t=$1 rep=$2 secs=$3 fpct=$4 ffirst=$5 pid=${PID[$1]:-} c0="" c1="" r0="" r1="" out res
  [ -n "$pid" ] && c0=$(cpu_ticks "$pid")
  [[ "$t" = tollgate_redis* ]] && r0=$(cpu_ticks "$REDIS_PID")
  local rr=0
  [ "$rep" -eq 0 ] && rr=1 # warm-up: every pool token once, in order
  out=$(BENCH_BODY=$BODY BENCH_PATH=/v1/messages BENCH_TOKENS=$RUN/tokens.txt BENCH_ROUND_ROBIN=$rr \
    BENCH_RR_START=${RR_START:-0} \
    BENCH_FRESH=$RUN/fresh.txt BENCH_FRESH_PCT=$fpct BENCH_FRESH_FIRST=$ffirst \
    BENCH_FRESH_COUNT=$FRESH_PER_RUN BENCH_THREADS=$WRK_THREADS \
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${secs}s" --timeout 10s -s "$LUA" \
    "${SCHEME[$t]:-http}://${ADDR[$t]}/v1/messages" 2>&1) || die "wrk against $t failed: $out"
  [ -n "$pid" ] && c1=$(cpu_ticks "$pid")
  [[ "$t" = tollgate_redis* ]] && r1=$(cpu_ticks "$REDIS_PID")
  res=$(grep '^BENCH_RESULT ' <<<"$out" | head -n 1 | sed 's/^BENCH_RESULT //')
  [ -n "$res" ] || die "no result from wrk against $t: $out"
  LAST_REQUESTS=$(sed 's/.*"requests":\([0-9]*\).*/\1/' <<<"$res")
  res=$(json_add kind=wrk target="$t" repeat="$rep" clk_tck="$CLK_TCK" \
    cpu_ticks="${c1:+$((c1 - c0))}" redis_cpu_ticks="${r1:+$((r1 - r0))}" <<<"$res")
  [ "$rep" -gt 0 ] && echo "$res" >>"$RUNS"
  python3 -c '
import json, sys
d = json.loads(sys.argv[1])
rps = d["requests"] / (d["duration_us"] / 1e6)
cpu = d.get("cpu_ticks")
cpu = "" if cpu in (None, "") or not d["requests"] else "  cpu %.1f us/req" % (cpu * 1e6 / d["clk_tck"] / d["requests"])
err = d["status_errors"] + d["connect_errors"] + d["read_errors"] + d["write_errors"] + d["timeouts"]
tag = "warm-up" if d["repeat"] == 0 else "run %d" % d["repeat"]
print("  %-15s %-8s %9.0f req/s  p50 %6.2f ms  p99 %6.2f ms%s%s" % (d["target"], tag, rps, d["p50_us"] / 1000, d["p99_us"] / 1000, cpu, "  ERRORS %d" % err if err else ""))
' "$res" >&2
}

# warm_up TARGET SECONDS: at least SECONDS, and until every pool token has
# been used once (so the measured runs see only the FRESH_PCT cold tokens).
warm_up() {
  local done_=0
  while :; do
    WRK_THREADS=1 RR_START=$done_ run_wrk "$1" 0 "$2" 0 0
    done_=$((done_ + LAST_REQUESTS))
    [ "$done_" -ge "$TOKENS" ] && break
    log "$1: warm-up covered $done_ of $TOKENS pool tokens, continuing"
  done
}

# run_fixed TARGET MODE(json|sse) REPEAT
run_fixed() {
  local t=$1 mode=$2 rep=$3 res stream=()
  [ "$mode" = sse ] && stream=(--stream)
  [ -n "$(tls_opt "$t")" ] && stream+=("$(tls_opt "$t")")
  res=$("${TOOL[@]}" fixed --addr "${ADDR[$t]}" --body "$BODY" --tokens "$RUN/tokens.txt" \
    --rate "$RATE" --duration "$LAT_SECONDS" "${stream[@]}") || die "fixed-rate run against $t failed"
  res=$(json_add kind=fixed target="$t" mode="$mode" repeat="$rep" <<<"$res")
  echo "$res" >>"$RUNS"
  python3 -c '
import json, sys
d = json.loads(sys.argv[1])
f = lambda v: "n/a" if v is None else "%.3f" % (v / 1000)
print("  %-15s %-4s p50 %s ms  p99 %s ms  ttfb p50 %s ms  ttfb p99 %s ms  errors %d" % (d["target"], d["mode"], f(d["p50_us"]), f(d["p99_us"]), f(d["ttfb_p50_us"]), f(d["ttfb_p99_us"]), d["errors"]))
' "$res" >&2
}

record_rss() {
  local t=$1 pid=${PID[$1]:-}
  [ -n "$pid" ] && alive "$pid" || return 0
  echo "{\"kind\":\"rss\",\"target\":\"$t\",\"rss_kb\":$(status_kb "$pid" VmRSS),\"hwm_kb\":$(status_kb "$pid" VmHWM)}" >>"$RUNS"
}

# ---------------------------------------------------------------- main
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
install_missing
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
CLK_TCK=$(getconf CLK_TCK)

if [ "$SKIP_BUILD" != 1 ]; then
  log "building release binaries (first build: several minutes)"
  cargo build --release --bin tollgate --example bare_proxy --example mint_tokens
fi
TG=$TARGET_DIR/release/tollgate
BARE=$TARGET_DIR/release/examples/bare_proxy
MINT=$TARGET_DIR/release/examples/mint_tokens
for b in "$TG" "$BARE" "$MINT"; do [ -x "$b" ] || die "$b is missing (SKIP_BUILD=1 without a build?)"; done

rm -rf "$RUN"
mkdir -p "$RUN"
: >"$RUNS"
export TOLLGATE_BENCH_PROVIDER_KEY=bench-not-a-real-key

read -r P_NGINX P_BARE P_TG P_TG_ADMIN P_TG_METRICS P_TGR P_TGR_ADMIN P_TGR_METRICS P_REDIS \
  P_MEM P_MEM_ADMIN P_MEM_METRICS P_TGF P_TGF_ADMIN P_TGF_METRICS \
  P_TGL P_TGL_ADMIN P_TGL_METRICS P_PG P_TGN P_TGN_ADMIN P_TGN_METRICS \
  P_TGG P_TGG_ADMIN P_TGG_METRICS P_TGRL P_TGRL_ADMIN P_TGRL_METRICS \
  P_BARE_TLS P_TGT P_TGT_ADMIN P_TGT_METRICS P_BARE_BODY <<<"$("${TOOL[@]}" ports 33)"
TLS_DIR=$RUN/tls

# Keys and tokens. Both are kept in target/load/ between runs: minting is RSA
# signing (1-2 ms a token per core), minutes for the memory test's users.
# Every run starts new proxies, so a kept token is still first-seen by them.
KEYS=$OUT/keys
TOKDIR=$OUT/tokens
if [ ! -f "$KEYS/private.pem" ] || [ ! -f "$KEYS/public.pem" ]; then
  rm -rf "$KEYS" "$TOKDIR"
  "$TG" keygen --dir "$KEYS" --kid k1 >/dev/null
fi
# mint LINK COUNT USERS FIRST PREFIX: LINK points at COUNT tokens, token i
# (from FIRST) for user PREFIX-(i % USERS); reused when minted < 20 h ago
# (they live 24 h) with the current key.
mint() {
  local cache="$TOKDIR/$5-$2-$3-$4.txt"
  if [ ! -s "$cache" ] || [ -z "$(find "$cache" -mmin -1200 -newer "$KEYS/private.pem" 2>/dev/null)" ] ||
    [ "$(wc -l <"$cache")" -ne "$2" ]; then
    mkdir -p "$TOKDIR"
    run_child "$MINT" -c "$RUN/tollgate.yaml" --count "$2" --users "$3" --first "$4" --prefix "$5" \
      --ttl-secs 86400 >"$cache.tmp"
    mv "$cache.tmp" "$cache"
  fi
  ln -sf "$cache" "$1"
}
tollgate_config "$RUN/tollgate.yaml" "$P_TG" "$P_TG_ADMIN" "$P_TG_METRICS" null "$RUN/usage-tollgate.jsonl"
tollgate_config "$RUN/tollgate-redis.yaml" "$P_TGR" "$P_TGR_ADMIN" "$P_TGR_METRICS" \
  "redis://127.0.0.1:$P_REDIS" "$RUN/usage-tollgate-redis.jsonl"
tollgate_config "$RUN/tollgate-redis-lease.yaml" "$P_TGRL" "$P_TGRL_ADMIN" "$P_TGRL_METRICS" \
  "redis://127.0.0.1:$P_REDIS" "$RUN/usage-tollgate-redis-lease.jsonl" "" "" 1s
tollgate_config "$RUN/tollgate-failover.yaml" "$P_TGF" "$P_TGF_ADMIN" "$P_TGF_METRICS" null \
  "$RUN/usage-tollgate-failover.jsonl" failover
tollgate_config "$RUN/tollgate-ledger.yaml" "$P_TGL" "$P_TGL_ADMIN" "$P_TGL_METRICS" null \
  "$RUN/usage-tollgate-ledger.jsonl" "" "postgres://postgres@127.0.0.1:$P_PG/postgres"
# Usage lines on stdout (into the target's log file): no journal.
tollgate_config "$RUN/tollgate-nojournal.yaml" "$P_TGN" "$P_TGN_ADMIN" "$P_TGN_METRICS" null "\"-\""
tollgate_config "$RUN/tollgate-guard.yaml" "$P_TGG" "$P_TGG_ADMIN" "$P_TGG_METRICS" null \
  "$RUN/usage-tollgate-guard.jsonl" guard
# The tollgate target's config with the TLS listener form.
tollgate_config "$RUN/tollgate-tls.yaml" "$P_TGT" "$P_TGT_ADMIN" "$P_TGT_METRICS" null "$RUN/usage-tollgate-tls.jsonl"
tls_listen "$RUN/tollgate-tls.yaml" "$P_TGT"
"$TG" check -c "$RUN/tollgate.yaml" >"$RUN/check.log" 2>&1 || die "tollgate check failed: $(cat "$RUN/check.log")"
"$TG" check -c "$RUN/tollgate-failover.yaml" >>"$RUN/check.log" 2>&1 || die "tollgate check (failover) failed: $(cat "$RUN/check.log")"
t0=$(date +%s.%N)
mint "$RUN/tokens.txt" "$TOKENS" "$USERS" 0 user
if [ "$MODE" = bench ] || [ "$MODE" = all ] || [ "$MODE" = profile ]; then
  mint "$RUN/fresh.txt" $((REPEATS * FRESH_PER_RUN)) "$USERS" "$TOKENS" user
else
  : >"$RUN/fresh.txt"
fi
log "tokens: $(wc -l <"$RUN/tokens.txt") pool + $(wc -l <"$RUN/fresh.txt") fresh (RS256), ready in $(python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$(date +%s.%N)") s"

# Fake provider.
"${TOOL[@]}" nginx-conf --listen "127.0.0.1:$P_NGINX" --run "$RUN" --responses "$LOAD/responses" --out "$RUN/nginx.conf"
start nginx "$NGINX" -c "$RUN/nginx.conf" -p "$RUN"
smoke nginx "127.0.0.1:$P_NGINX" || die "nginx fake provider did not answer: $(cat "$RUN/nginx.log" "$RUN/nginx-error.log" 2>/dev/null | tail -n 5)"
log "fake provider: nginx on 127.0.0.1:$P_NGINX"

declare -A UNAVAIL
REDIS_PID=""
ACTIVE=()
if [ "$MODE" = bench ] || [ "$MODE" = all ]; then
  for t in $TARGETS; do
    case "$t" in
      direct)
        ADDR[direct]=127.0.0.1:$P_NGINX
        ;;
      bare)
        start bare env -u RUST_LOG BARE_THREADS="$THREADS" "$BARE" "127.0.0.1:$P_BARE" "127.0.0.1:$P_NGINX"
        PID[bare]=$STARTED
        ADDR[bare]=127.0.0.1:$P_BARE
        smoke bare "127.0.0.1:$P_BARE" || die "bare_proxy did not answer: $(tail -n 5 "$RUN/bare.log")"
        ;;
      bare_body)
        start bare_body env -u RUST_LOG BARE_THREADS="$THREADS" BARE_READ_BODY=1 "$BARE" \
          "127.0.0.1:$P_BARE_BODY" "127.0.0.1:$P_NGINX"
        PID[bare_body]=$STARTED
        ADDR[bare_body]=127.0.0.1:$P_BARE_BODY
        smoke bare_body "127.0.0.1:$P_BARE_BODY" ||
          die "bare_proxy (BARE_READ_BODY=1) did not answer: $(tail -n 5 "$RUN/bare_body.log")"
        ;;
      tollgate)
        start_tollgate tollgate "$RUN/tollgate.yaml" "$P_TG_ADMIN" "$P_TG" ||
          die "tollgate (in-process store) $UNAVAILABLE; see $RUN/tollgate.log"
        PID[tollgate]=$STARTED
        ADDR[tollgate]=127.0.0.1:$P_TG
        ;;
      tollgate_redis | tollgate_redis_lease)
        if [ "$t" = tollgate_redis ]; then
          cfg=$RUN/tollgate-redis.yaml admin=$P_TGR_ADMIN port=$P_TGR
        else
          cfg=$RUN/tollgate-redis-lease.yaml admin=$P_TGRL_ADMIN port=$P_TGRL
        fi
        if [ -z "$REDIS_PID" ]; then
          start redis redis-server --port "$P_REDIS" --bind 127.0.0.1 --save '' --appendonly no --dir "$RUN"
          REDIS_PID=$STARTED
        fi
        if ! timeout 10 bash -c "until redis-cli -p $P_REDIS ping 2>/dev/null | grep -q PONG; do sleep 0.1; done"; then
          UNAVAIL[$t]="redis-server did not start"
        elif ! start_tollgate "$t" "$cfg" "$admin" "$port"; then
          UNAVAIL[$t]=$UNAVAILABLE
        elif [ "$(redis-cli -p "$P_REDIS" dbsize 2>/dev/null || echo 0)" -eq 0 ]; then
          # A build that ignores store.redis_url would be measured as in-process.
          UNAVAIL[$t]="tollgate answered but wrote nothing to Redis (store.redis_url not used by this build)"
        else
          PID[$t]=$STARTED
          ADDR[$t]=127.0.0.1:$port
        fi
        if [ -n "${UNAVAIL[$t]:-}" ]; then
          log "$t: n/a (${UNAVAIL[$t]})"
          echo "{\"kind\":\"unavailable\",\"target\":\"$t\",\"reason\":$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "${UNAVAIL[$t]}")}" >>"$RUNS"
          continue
        fi
        ;;
      tollgate_failover)
        start_tollgate tollgate_failover "$RUN/tollgate-failover.yaml" "$P_TGF_ADMIN" "$P_TGF" ||
          die "tollgate (failover) $UNAVAILABLE; see $RUN/tollgate_failover.log"
        PID[tollgate_failover]=$STARTED
        ADDR[tollgate_failover]=127.0.0.1:$P_TGF
        ;;
      tollgate_ledger)
        if ! start_postgres; then
          UNAVAIL[tollgate_ledger]="PostgreSQL did not start (see $RUN/pg/server.log)"
        elif ! start_tollgate tollgate_ledger "$RUN/tollgate-ledger.yaml" "$P_TGL_ADMIN" "$P_TGL"; then
          UNAVAIL[tollgate_ledger]=$UNAVAILABLE
        else
          PID[tollgate_ledger]=$STARTED
          ADDR[tollgate_ledger]=127.0.0.1:$P_TGL
        fi
        if [ -n "${UNAVAIL[tollgate_ledger]:-}" ]; then
          log "tollgate_ledger: n/a (${UNAVAIL[tollgate_ledger]})"
          echo "{\"kind\":\"unavailable\",\"target\":\"tollgate_ledger\",\"reason\":$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "${UNAVAIL[tollgate_ledger]}")}" >>"$RUNS"
          continue
        fi
        ;;
      tollgate_nojournal)
        start_tollgate tollgate_nojournal "$RUN/tollgate-nojournal.yaml" "$P_TGN_ADMIN" "$P_TGN" ||
          die "tollgate (no journal) $UNAVAILABLE; see $RUN/tollgate_nojournal.log"
        PID[tollgate_nojournal]=$STARTED
        ADDR[tollgate_nojournal]=127.0.0.1:$P_TGN
        ;;
      tollgate_guard)
        start_tollgate tollgate_guard "$RUN/tollgate-guard.yaml" "$P_TGG_ADMIN" "$P_TGG" ||
          die "tollgate (guard) $UNAVAILABLE; see $RUN/tollgate_guard.log"
        PID[tollgate_guard]=$STARTED
        ADDR[tollgate_guard]=127.0.0.1:$P_TGG
        ;;
      bare_tls)
        make_cert
        SCHEME[bare_tls]=https
        start bare_tls env -u RUST_LOG BARE_THREADS="$THREADS" BARE_TLS_CERT="$TLS_DIR/cert.pem" \
          BARE_TLS_KEY="$TLS_DIR/key.pem" "$BARE" "127.0.0.1:$P_BARE_TLS" "127.0.0.1:$P_NGINX"
        PID[bare_tls]=$STARTED
        ADDR[bare_tls]=127.0.0.1:$P_BARE_TLS
        smoke bare_tls "127.0.0.1:$P_BARE_TLS" ||
          die "bare_proxy (TLS) did not answer: $(tail -n 5 "$RUN/bare_tls.log") $(tail -n 1 "$RUN/smoke-bare_tls.err")"
        ;;
      tollgate_tls)
        make_cert
        SCHEME[tollgate_tls]=https
        "$TG" check -c "$RUN/tollgate-tls.yaml" >>"$RUN/check.log" 2>&1 ||
          die "tollgate check (TLS) failed: $(tail -n 5 "$RUN/check.log")"
        start_tollgate tollgate_tls "$RUN/tollgate-tls.yaml" "$P_TGT_ADMIN" "$P_TGT" ||
          die "tollgate (TLS listener) $UNAVAILABLE; see $RUN/tollgate_tls.log"
        PID[tollgate_tls]=$STARTED
        ADDR[tollgate_tls]=127.0.0.1:$P_TGT
        ;;
      *) die "unknown target $t (direct, bare, bare_body, tollgate, bare_tls, tollgate_tls, tollgate_redis, tollgate_redis_lease, tollgate_failover, tollgate_ledger, tollgate_nojournal, tollgate_guard)" ;;
    esac
    ACTIVE+=("$t")
  done
  log "targets: ${ACTIVE[*]}"

  log "warm-up: ${WARMUP}s each"
  for t in "${ACTIVE[@]}"; do warm_up "$t" "$WARMUP"; done

  log "throughput: ${REPEATS} x ${DURATION}s per target, ${CONNECTIONS} connections, interleaved"
  n=${#ACTIVE[@]}
  for rep in $(seq 1 "$REPEATS"); do
    # Rotate the order each repeat so slow drift spreads over every target.
    for i in $(seq 0 $((n - 1))); do
      t=${ACTIVE[$(((i + rep - 1) % n))]}
      run_wrk "$t" "$rep" "$DURATION" "$FRESH_PCT" $(((rep - 1) * FRESH_PER_RUN))
    done
  done

  if [ "$LAT_SECONDS" != 0 ]; then
    log "latency: ${RATE} req/s for ${LAT_SECONDS}s per target (JSON, then SSE)"
    for rep in $(seq 1 "$LAT_REPEATS"); do
      for mode in json sse; do
        for t in "${ACTIVE[@]}"; do run_fixed "$t" "$mode" "$rep"; done
      done
    done
  else
    log "latency: skipped (LAT_SECONDS=0)"
  fi
  for t in "${ACTIVE[@]}"; do record_rss "$t"; done
fi

# ---------------------------------------------------------------- memory test
if [ "$MODE" = mem ] || [ "$MODE" = all ]; then
  tollgate_config "$RUN/tollgate-mem.yaml" "$P_MEM" "$P_MEM_ADMIN" "$P_MEM_METRICS" null "$RUN/usage-tollgate-mem.jsonl"
  start_tollgate tollgate_mem "$RUN/tollgate-mem.yaml" "$P_MEM_ADMIN" "$P_MEM" ||
    die "tollgate for the memory test $UNAVAILABLE; see $RUN/tollgate_mem.log"
  MEM_PID=$STARTED
  PID[tollgate_mem]=$MEM_PID
  ADDR[tollgate_mem]=127.0.0.1:$P_MEM
  log "memory test: warm-up with the ${TOKENS}-token pool"
  warm_up tollgate_mem "$WARMUP"
  for round in $(seq 1 "$MEM_ROUNDS"); do
    t0=$(date +%s.%N)
    # A distinct user per token across every round.
    mint "$RUN/mem-tokens.txt" "$MEM_USERS" 1000000000 $(((round - 1) * MEM_USERS)) memuser
    log "memory test round $round: $MEM_USERS tokens for $MEM_USERS distinct users ready in $(python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$(date +%s.%N)") s"
    alive "$MEM_PID" || die "the memory test's tollgate is gone: $(tail -n 3 "$RUN/tollgate_mem.log")"
    sleep 1
    before=$(status_kb "$MEM_PID" VmRSS)
    # wrk runs for its whole -d even when every thread has stopped: watch the
    # usage log (one record per answered request) and stop wrk with SIGINT
    # (it still reports) once every user has been served, or nothing moves.
    ulog=$RUN/usage-tollgate-mem.jsonl
    base=$(wc -l <"$ulog")
    BENCH_BODY=$BODY BENCH_PATH=/v1/messages BENCH_SEQUENTIAL=1 BENCH_FRESH=$RUN/mem-tokens.txt \
      BENCH_FRESH_FIRST=0 BENCH_FRESH_COUNT="$MEM_USERS" BENCH_THREADS=$WRK_THREADS \
      wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${MEM_MAX_SECONDS}s" --timeout 10s -s "$LUA" \
      "http://127.0.0.1:$P_MEM/v1/messages" >"$RUN/mem-wrk-$round.txt" 2>&1 &
    wrk_pid=$!
    t0=$(date +%s%N)
    last=$base
    idle_since=$t0
    while alive "$wrk_pid"; do
      sleep 0.2
      n=$(wc -l <"$ulog")
      now=$(date +%s%N)
      [ $((n - base)) -ge "$MEM_USERS" ] && break
      if [ "$n" -ne "$last" ]; then
        last=$n
        idle_since=$now
      elif [ $((now - idle_since)) -gt 10000000000 ]; then
        log "memory test: no request answered for 10 s, stopping"
        break
      fi
    done
    secs=$(((now - t0) / 1000000))
    kill -INT "$wrk_pid" 2>/dev/null || true
    wait "$wrk_pid" || true
    res=$(grep '^BENCH_RESULT ' "$RUN/mem-wrk-$round.txt" | sed 's/^BENCH_RESULT //')
    [ -n "$res" ] || die "no result from wrk (memory test): $(tail -n 5 "$RUN/mem-wrk-$round.txt")"
    sleep 1
    alive "$MEM_PID" || die "the memory test's tollgate exited during the run: $(tail -n 3 "$RUN/tollgate_mem.log")"
    after=$(status_kb "$MEM_PID" VmRSS)
    hwm=$(status_kb "$MEM_PID" VmHWM)
    res=$(python3 -c '
import json, sys
d = json.loads(sys.argv[1])
err = d["status_errors"] + d["connect_errors"] + d["read_errors"] + d["write_errors"] + d["timeouts"]
print(json.dumps({"kind": "mem", "round": int(sys.argv[2]), "users": d["fresh_used"], "requests": d["requests"],
                  "records": int(sys.argv[7]), "seconds": int(sys.argv[6]) / 1000.0, "errors": err,
                  "rss_before_kb": int(sys.argv[3]), "rss_after_kb": int(sys.argv[4]), "hwm_kb": int(sys.argv[5])}))' \
      "$res" "$round" "$before" "$after" "$hwm" "$secs" "$(($(wc -l <"$ulog") - base))")
    echo "$res" >>"$RUNS"
    log "memory test round $round: $res"
    if [ "$MEM_WAIT" -gt 0 ]; then
      # Per-user state should expire after its windows; the next round then
      # reuses the freed memory instead of growing.
      log "memory test: idle for ${MEM_WAIT}s (windows expire, sweeps run)"
      run_child sleep "$MEM_WAIT"
      alive "$MEM_PID" || die "the memory test's tollgate exited while idle: $(tail -n 3 "$RUN/tollgate_mem.log")"
      echo "{\"kind\":\"mem_idle\",\"round\":$round,\"waited_s\":$MEM_WAIT,\"rss_kb\":$(status_kb "$MEM_PID" VmRSS)}" >>"$RUNS"
    fi
  done
fi

# ---------------------------------------------------------------- profile
if [ "$MODE" = profile ]; then
  for t in $PROFILE_TARGETS; do
    read_body=0
    case "$t" in
      bare)
        cmd=("$BARE" "127.0.0.1:$P_BARE" "127.0.0.1:$P_NGINX")
        port=$P_BARE ready=""
        ;;
      bare_body)
        cmd=("$BARE" "127.0.0.1:$P_BARE_BODY" "127.0.0.1:$P_NGINX")
        read_body=1
        port=$P_BARE_BODY ready=""
        ;;
      tollgate)
        cmd=("$TG" serve -c "$RUN/tollgate.yaml")
        port=$P_TG ready="http://127.0.0.1:$P_TG_ADMIN/readyz"
        ;;
      tollgate_nojournal)
        cmd=("$TG" serve -c "$RUN/tollgate-nojournal.yaml")
        port=$P_TGN ready="http://127.0.0.1:$P_TGN_ADMIN/readyz"
        ;;
      tollgate_redis | tollgate_redis_lease)
        if [ -z "${REDIS_PID:-}" ]; then
          start redis redis-server --port "$P_REDIS" --bind 127.0.0.1 --save '' --appendonly no --dir "$RUN"
          REDIS_PID=$STARTED
          timeout 10 bash -c "until redis-cli -p $P_REDIS ping 2>/dev/null | grep -q PONG; do sleep 0.1; done" ||
            die "redis-server did not start"
        fi
        if [ "$t" = tollgate_redis ]; then
          cmd=("$TG" serve -c "$RUN/tollgate-redis.yaml")
          port=$P_TGR ready="http://127.0.0.1:$P_TGR_ADMIN/readyz"
        else
          cmd=("$TG" serve -c "$RUN/tollgate-redis-lease.yaml")
          port=$P_TGRL ready="http://127.0.0.1:$P_TGRL_ADMIN/readyz"
        fi
        ;;
      *) die "PROFILE_TARGETS: bare, bare_body, tollgate, tollgate_nojournal, tollgate_redis or tollgate_redis_lease, not $t" ;;
    esac
    ADDR[$t]=127.0.0.1:$port
    if [ "$PROFILER" = callgrind ]; then
      out_file=$RUN/callgrind.$t.out
      # shellcheck disable=SC2086 # CALLGRIND_OPTS is a list of options
      start "profile-$t" env -u RUST_LOG BARE_THREADS="$THREADS" BARE_READ_BODY=$read_body valgrind --tool=callgrind \
        $CALLGRIND_OPTS --callgrind-out-file="$out_file" "${cmd[@]}"
    else
      start "profile-$t" env -u RUST_LOG BARE_THREADS="$THREADS" BARE_READ_BODY=$read_body "${cmd[@]}"
    fi
    pid=$STARTED
    PID[$t]=$pid
    if [ -n "$ready" ]; then
      "${TOOL[@]}" wait-http "$ready" --timeout 300 --pid "$pid" || die "$t did not start: $(tail -n 3 "$RUN/profile-$t.log")"
    fi
    smoke "$t" "127.0.0.1:$port" 600 || die "$t did not answer: $(tail -n 3 "$RUN/profile-$t.log")"
    log "profile $t ($PROFILER): warm-up"
    if [ "$PROFILER" = callgrind ]; then
      CONNECTIONS=$PROFILE_CONNECTIONS warm_up "$t" "$PROFILE_WARMUP"
      callgrind_control -z "$pid" >/dev/null 2>&1
      c0=$(cpu_ticks "$pid")
      out=$(BENCH_BODY=$BODY BENCH_TOKENS=$RUN/tokens.txt BENCH_FRESH=$RUN/fresh.txt \
        BENCH_FRESH_PCT=$FRESH_PCT BENCH_FRESH_FIRST=0 BENCH_FRESH_COUNT=$FRESH_PER_RUN \
        BENCH_THREADS=1 wrk -t1 -c"$PROFILE_CONNECTIONS" -d"${PROFILE_SECONDS}s" --timeout 30s \
        -s "$LUA" "http://127.0.0.1:$port/v1/messages" 2>&1) || die "wrk (profile) failed: $out"
      sleep 1
      callgrind_control -d "$pid" >/dev/null 2>&1
      sleep 1
      dump=$( (ls -t "$out_file".* 2>/dev/null || true) | head -n 1)
      [ -n "$dump" ] || die "no callgrind dump for $t"
      callgrind_annotate --inclusive=no --threshold=100 "$dump" >"$RUN/profile-$t.txt" 2>&1 || true
      callgrind_annotate --inclusive=yes "$dump" >"$RUN/profile-$t-inclusive.txt" 2>&1 || true
      ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
      res=$(grep '^BENCH_RESULT ' <<<"$out" | sed 's/^BENCH_RESULT //')
      res=$(json_add kind=profile target="$t" profiler=callgrind ir="$ir" dump="$dump" <<<"$res")
    else
      warm_up "$t" "$WARMUP"
      (BENCH_BODY=$BODY BENCH_TOKENS=$RUN/tokens.txt BENCH_FRESH=$RUN/fresh.txt \
        BENCH_FRESH_PCT=$FRESH_PCT BENCH_FRESH_FIRST=0 BENCH_FRESH_COUNT=$FRESH_PER_RUN \
        BENCH_THREADS=$WRK_THREADS wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$((PROFILE_SECONDS + 2))s" \
        -s "$LUA" "http://127.0.0.1:$port/v1/messages" >"$RUN/profile-$t-wrk.txt" 2>&1) &
      wrk_pid=$!
      sleep 1
      if [ "$PROFILER" = perf ]; then
        # shellcheck disable=SC2086 # PERF_RECORD is a list of perf options
        perf record $PERF_RECORD -g -p "$pid" -o "$RUN/perf.$t.data" -- sleep "$PROFILE_SECONDS" \
          >"$RUN/perf-$t.log" 2>&1 || die "perf record failed: $(tail -n 3 "$RUN/perf-$t.log")"
        wait "$wrk_pid" || true
        perf report -i "$RUN/perf.$t.data" --stdio --no-children --percent-limit 0.5 \
          >"$RUN/profile-$t.txt" 2>/dev/null || true
        res=$(grep '^BENCH_RESULT ' "$RUN/profile-$t-wrk.txt" | sed 's/^BENCH_RESULT //')
        res=$(json_add kind=profile target="$t" profiler=perf data="$RUN/perf.$t.data" <<<"$res")
      else
        # Costs callgrind does not count: the kernel's share of a request
        # (system calls, wake-ups of other threads), per request of the
        # same window.
        before=$(requests_served)
        perf stat -x, -e task-clock,context-switches,cpu-migrations,page-faults,raw_syscalls:sys_enter \
          --per-thread -p "$pid" -o "$RUN/profile-$t-threads.csv" -- sleep "$PROFILE_SECONDS" \
          >"$RUN/perf-$t.log" 2>&1 || die "perf stat failed: $(tail -n 3 "$RUN/perf-$t.log")"
        served=$(($(requests_served) - before))
        wait "$wrk_pid" || true
        stat=$("${TOOL[@]}" perf-stat "$RUN/profile-$t-threads.csv" --requests "$served" \
          --out "$RUN/profile-$t.txt")
        res=$(grep '^BENCH_RESULT ' "$RUN/profile-$t-wrk.txt" | sed 's/^BENCH_RESULT //')
        res=$(json_add kind=profile target="$t" profiler=stat stat="$stat" requests="$served" <<<"$res")
      fi
    fi
    echo "$res" >>"$RUNS"
    if [[ "$t" = tollgate_redis* ]]; then
      # Calls and µs per script call inside redis-server, for the whole run.
      redis-cli -p "$P_REDIS" info commandstats >"$RUN/profile-$t-commandstats.txt" 2>&1 || true
      redis-cli -p "$P_REDIS" config resetstat >/dev/null 2>&1 || true
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    log "profile $t: $RUN/profile-$t.txt"
  done
fi

# ---------------------------------------------------------------- report
notes=()
for f in "$RUN"/usage-tollgate*.jsonl; do
  [ -f "$f" ] && notes+=("$(basename "$f" .jsonl | sed 's/^usage-//'): $(wc -l <"$f") usage records written.")
done
cmd="scripts/load.sh $MODE"
for k in DURATION REPEATS WARMUP CONNECTIONS WRK_THREADS USERS TOKENS FRESH_PCT FRESH_PER_RUN RATE \
  LAT_SECONDS LAT_REPEATS TARGETS THREADS PER_USER_LABELS MEM_USERS MEM_ROUNDS MEM_WAIT MEM_MAX_SECONDS PROFILER \
  PROFILE_TARGETS PROFILE_SECONDS PROFILE_CONNECTIONS PROFILE_WARMUP CALLGRIND_OPTS PERF_RECORD; do
  # Only the knobs set in the environment, so the command reproduces the run.
  if printenv "$k" >/dev/null 2>&1; then cmd="$k=$(printf '%q' "${!k}") $cmd"; fi
done
python3 - "$RUN/meta.json" "$cmd" "$NOTE" "$(printf '%s\n' "${notes[@]}")" <<EOF
import json, os, subprocess, sys, time
def sh(*c):
    try:
        return subprocess.run(c, capture_output=True, text=True, cwd="$ROOT").stdout.strip()
    except OSError:
        return ""
commit = sh("git", "rev-parse", "--short", "HEAD") or "?"
if sh("git", "status", "--porcelain", "--untracked-files=no"):
    commit += " + uncommitted changes"
cpu = "?"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
meta = {
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "command": sys.argv[2], "note": sys.argv[3],
    "notes": [n for n in sys.argv[4].splitlines() if n],
    "cpu": cpu, "nproc": os.cpu_count(), "loadavg": "$LOADAVG_START",
    "commit": commit, "targets": "$TARGETS".split(),
    "connections": $CONNECTIONS, "wrk_threads": $WRK_THREADS, "duration": $DURATION,
    "repeats": $REPEATS, "body_bytes": os.path.getsize("$BODY"), "tokens": $TOKENS,
    "users": $USERS, "fresh_pct": $FRESH_PCT, "rate": $RATE, "lat_seconds": $LAT_SECONDS,
    "threads": $THREADS, "mode": "$MODE",
}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF
mkdir -p "$OUT"
echo
"${TOOL[@]}" report --runs "$RUNS" --meta "$RUN/meta.json" --out "$OUT/results.md"
log "written: $OUT/results.md (raw runs: $RUNS, logs: $RUN/)"
