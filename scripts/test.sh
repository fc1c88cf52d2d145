#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and property tests, and the
# end-to-end tests that run the real gateway against a fake provider, real
# clients (Claude Code, llm; installed pinned under target/) and a private
# Redis started here (and stopped on exit).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The real clients the end-to-end tests drive (Claude Code, llm), pinned.
bash scripts/real-clients.sh target/real-clients
export TOLLGATE_REAL_CLIENTS_DIR="$PWD/target/real-clients"
export TOLLGATE_REAL_CLIENTS_REQUIRED=1

build_dir="$PWD/target/test-redis"
mkdir -p "$build_dir"
port="${TOLLGATE_TEST_REDIS_PORT:-$((20000 + RANDOM % 20000))}"
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$build_dir" --pidfile "$build_dir/redis.pid" --daemonize yes \
  --logfile "$build_dir/redis.log" >/dev/null
stop_redis() {
  if [ -f "$build_dir/redis.pid" ]; then
    kill "$(cat "$build_dir/redis.pid")" 2>/dev/null || true
    rm -f "$build_dir/redis.pid"
  fi
}
trap stop_redis EXIT
export TOLLGATE_TEST_REDIS_URL="redis://127.0.0.1:$port"
export TOLLGATE_TEST_REDIS_PORT="$port"
export TOLLGATE_TEST_REDIS_DIR="$build_dir"

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
