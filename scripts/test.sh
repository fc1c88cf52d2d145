#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and property tests, and the
# end-to-end tests that run the real gateway against a fake provider, real
# clients (Claude Code, llm; installed pinned under target/), and a private
# Redis and PostgreSQL started here (and stopped on exit).
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
stop_postgres() { :; }
trap 'stop_redis; stop_postgres' EXIT
export TOLLGATE_TEST_REDIS_URL="redis://127.0.0.1:$port"
export TOLLGATE_TEST_REDIS_PORT="$port"
export TOLLGATE_TEST_REDIS_DIR="$build_dir"

# A private PostgreSQL for the ledger tests, never the machine's own (which
# may listen on 5432). It refuses to run as root, and CI runs as root: then
# it runs as the postgres user, in a data folder that user owns.
pg_bin=""
for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && pg_bin="$d"; done
if [ -z "$pg_bin" ] && command -v initdb >/dev/null 2>&1; then
  pg_bin="$(dirname "$(command -v initdb)")"
fi
[ -n "$pg_bin" ] || { echo "PostgreSQL (initdb) not found after setup" >&2; exit 1; }
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
pg_dir="$PWD/target/test-postgres"
mkdir -p "$pg_dir"
if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$pg_dir"; then
  # A parent of the checkout (e.g. /root) is closed to the postgres user,
  # which must reach its data folder: use one under /tmp instead.
  pg_dir="$(mktemp -d /tmp/tollgate-test-postgres.XXXXXX)"
  chmod 755 "$pg_dir"
fi
pg_data="$pg_dir/data"
stop_postgres() {
  if [ -f "$pg_data/postmaster.pid" ]; then
    as_pg "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null 2>&1 || true
  fi
}
rm -rf "$pg_data"
mkdir -p "$pg_data"
[ "$(id -u)" -eq 0 ] && chown postgres: "$pg_data"
as_pg "$pg_bin/initdb" -D "$pg_data" -A trust -U postgres --no-sync >"$pg_dir/initdb.log" 2>&1 \
  || { cat "$pg_dir/initdb.log" >&2; exit 1; }
pg_started=""
for _ in 1 2 3; do
  pg_port="${TOLLGATE_TEST_POSTGRES_PORT:-$((20000 + RANDOM % 20000))}"
  if as_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_data/server.log" -w -t 60 \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $pg_data -c fsync=off" start >/dev/null; then
    pg_started=1
    break
  fi
done
[ -n "$pg_started" ] || { cat "$pg_data/server.log" >&2; exit 1; }
export TOLLGATE_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
export TOLLGATE_TEST_POSTGRES_BIN="$pg_bin"

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
