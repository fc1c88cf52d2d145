#!/usr/bin/env bash
# Verifies conf/tollgate.service without installing anything:
#   1. `systemd-analyze verify` on a copy whose /usr/local/bin/tollgate is
#      replaced by BINARY (verify insists that every Exec*= command exists and
#      is executable). Any warning about the unit (unknown key, unparsable
#      value, missing command) is a failure, not just a non-zero exit: verify
#      exits 0 on most of them.
#   2. `systemd-analyze security --offline` stays at or below an exposure of
#      2.5 (when this systemd has --offline, v250+).
#   3. The unit agrees with conf/tollgate.systemd.yaml: PIDFile= is
#      server.pid_file, the pid file and upgrade socket live in the
#      RuntimeDirectory=, the usage log in the LogsDirectory=, and
#      TimeoutStopSec= exceeds grace_period_seconds +
#      graceful_shutdown_timeout_seconds + 10 s (the final usage-log flush),
#      and the start/reload commands are the ones docs/operations.md describes.
#
# Creates no user, touches nothing outside a temp dir. `User=tollgate` needs
# no such user to exist: verify does not resolve it.
#
# usage: scripts/verify-unit.sh [BINARY]   (default: target/debug/tollgate of this repository)
# exit:  0 ok, 1 a check failed, 77 systemd-analyze not installed (skip;
#        `apt-get install -y systemd` provides it)
set -euo pipefail

# BINARY is taken relative to the caller's directory; the default relative to
# the repository.
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/debug/tollgate}
case "$bin" in /*) ;; *) bin=$PWD/$bin ;; esac
cd "$root"
unit=conf/tollgate.service
conf=conf/tollgate.systemd.yaml

fail() {
    echo "verify-unit: FAIL: $*" >&2
    exit 1
}

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "verify-unit: SKIP: systemd-analyze not found (apt-get install -y systemd)" >&2
    exit 77
fi
[ -f "$unit" ] || fail "$unit not found"
[ -f "$conf" ] || fail "$conf not found"
[ -f "$bin" ] && [ -x "$bin" ] || fail "binary $bin is not an executable file (build it, or pass a path)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/local/bin/tollgate#${bin}#g" "$unit" >"$tmp/tollgate.service"

# --- 1. systemd-analyze verify ---------------------------------------------
# `notice` shows warnings (unknown keys, bad values) but not debug chatter.
out=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify "$tmp/tollgate.service" 2>&1) && rc=0 || rc=$?
[ -n "$out" ] && printf '%s\n' "$out" >&2
if [ "$rc" -ne 0 ]; then
    fail "systemd-analyze verify exited $rc"
fi
# Lines about our unit are problems in it; other lines (e.g. about units
# installed on this machine) are shown but do not count.
if printf '%s\n' "$out" | grep -q "tollgate.service"; then
    fail "systemd-analyze verify reported problems in $unit"
fi
echo "verify-unit: systemd-analyze verify: ok"

# --- 2. exposure ---------------------------------------------------------------
if systemd-analyze security --help 2>/dev/null | grep -q -- "--offline"; then
    # --threshold is in tenths: 25 = an overall exposure of 2.5 out of 10.
    if ! sec=$(systemd-analyze security --offline=yes --threshold=25 "$tmp/tollgate.service" 2>&1); then
        printf '%s\n' "$sec" >&2
        fail "systemd-analyze security: exposure above 2.5"
    fi
    echo "verify-unit: systemd-analyze security: $(printf '%s\n' "$sec" | grep -o 'Overall exposure level.*' || echo ok)"
else
    echo "verify-unit: systemd-analyze security --offline not supported here; skipped"
fi

# --- 3. unit <-> conf/tollgate.systemd.yaml -------------------------------------
unit_val() { sed -n "s/^$1=//p" "$unit" | tail -n 1; }
# `  key: value   # comment` from the YAML (first match), quotes stripped.
yaml_val() {
    sed -n "s/^[[:space:]]*$1:[[:space:]]*\([^#[:space:]]*\).*/\1/p" "$conf" | head -n 1 | tr -d "\"'"
}

pidfile=$(unit_val PIDFile)
rundir=/run/$(unit_val RuntimeDirectory)
logdir=/var/log/$(unit_val LogsDirectory)
stop=$(unit_val TimeoutStopSec)
[ "$(yaml_val pid_file)" = "$pidfile" ] ||
    fail "PIDFile=$pidfile but server.pid_file is $(yaml_val pid_file)"
case "$(yaml_val upgrade_sock)" in
    "$rundir"/*) ;;
    *) fail "server.upgrade_sock $(yaml_val upgrade_sock) is not under RuntimeDirectory $rundir" ;;
esac
case "$pidfile" in
    "$rundir"/*) ;;
    *) fail "PIDFile=$pidfile is not under RuntimeDirectory $rundir" ;;
esac
case "$(yaml_val log_path)" in
    "$logdir"/*) ;;
    *) fail "usage.log_path $(yaml_val log_path) is not under LogsDirectory $logdir" ;;
esac
statedir=/var/lib/$(unit_val StateDirectory)
case "$(yaml_val journal_dir)" in
    "$statedir"/*) ;;
    *) fail "usage.journal_dir $(yaml_val journal_dir) is not under StateDirectory $statedir" ;;
esac
grace=$(yaml_val grace_period_seconds)
shut=$(yaml_val graceful_shutdown_timeout_seconds)
case "$stop" in
    *[!0-9]*|"") fail "TimeoutStopSec=$stop: write it in plain seconds" ;;
esac
# + 10: tollgate's final usage-log flush after Pingora's shutdown (src/server.rs).
[ "$stop" -gt $((grace + shut + 10)) ] ||
    fail "TimeoutStopSec=$stop must exceed grace_period_seconds + graceful_shutdown_timeout_seconds + 10 s of usage-log flush ($grace + $shut + 10)"
for cmd in "ExecStart=.* serve -d -c /etc/tollgate/tollgate.yaml" \
    "ExecReload=.* serve -u -d -c /etc/tollgate/tollgate.yaml" \
    'ExecReload=/bin/kill -QUIT \$MAINPID'; do
    grep -q "^$cmd\$" "$unit" || fail "$unit has no line matching: $cmd"
done
echo "verify-unit: unit and $conf agree"
echo "verify-unit: ok"
