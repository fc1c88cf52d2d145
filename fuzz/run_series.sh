#!/usr/bin/env bash
# Runs fuzz targets, each until TOTAL inputs, in chunks of CHUNK inputs on
# one core, and prints one line per target with its executed-input count.
#
#   fuzz/run_series.sh [TARGET ...]          # default: all six
#   TOTAL=10000000 CHUNK=1000000 BIN=target/nosan/x86_64-unknown-linux-gnu/release
#
# `work/<target>.progress` gets a line per chunk (inputs so far).
#
# Why chunks: a shared 2-core machine also runs benchmarks. Between chunks the
# series waits while the file `work/PAUSE` exists, so a load test can have
# both cores without stopping libFuzzer mid-input (a stopped process would
# trip its per-input -timeout when resumed). Each chunk resumes from the
# working corpus in `work/<target>`, so the chunks add up to one run.
# Counts come from libFuzzer's own `stat::number_of_executed_units`.
# A crash, timeout or out-of-memory stops the series with libFuzzer's status
# and leaves the input in `artifacts/<target>/`.
set -euo pipefail
cd "$(dirname "$0")"
TOTAL=${TOTAL:-10000000}
CHUNK=${CHUNK:-1000000}
BIN=${BIN:-target/nosan/x86_64-unknown-linux-gnu/release}
LOG=${LOG:-work/series.log}
ALL="sse_usage_anthropic sse_usage_openai json_usage request_body jwt_verify config_load"
targets=${*:-$ALL}
mkdir -p work
max_len() {
  case "$1" in
    jwt_verify) echo 8192 ;;
    config_load) echo 16384 ;;
    *) echo 65536 ;;
  esac
}
for t in $targets; do
  [ -x "$BIN/$t" ] || { echo "missing $BIN/$t: build with cargo fuzz build -s none --target-dir target/nosan" >&2; exit 2; }
  mkdir -p "work/$t" "artifacts/$t"
  done_runs=0
  active=0
  while [ "$done_runs" -lt "$TOTAL" ]; do
    while [ -e work/PAUSE ]; do sleep 5; done
    n=$((TOTAL - done_runs < CHUNK ? TOTAL - done_runs : CHUNK))
    out="work/$t.chunk.log"
    rc=0
    t0=$(date +%s)
    "$BIN/$t" "work/$t" "corpus/$t" -runs="$n" -max_len="$(max_len "$t")" -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$out" 2>&1 || rc=$?
    ran=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -n 1)
    if [ "$rc" -ne 0 ] || [ -z "$ran" ]; then
      echo "$(date -u +%FT%TZ) $t FAILED (exit $rc) after $done_runs inputs; see fuzz/$out" | tee -a "$LOG"
      exit 1
    fi
    done_runs=$((done_runs + ran))
    active=$((active + $(date +%s) - t0))
    echo "$(date -u +%FT%TZ) $t $done_runs" >>"work/$t.progress"
  done
  corpus=$(find "work/$t" -type f | wc -l)
  echo "$(date -u +%FT%TZ) $t ok: $done_runs inputs in ${active}s of fuzzing, corpus $corpus, no crash/timeout/oom" | tee -a "$LOG"
done
