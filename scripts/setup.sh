#!/usr/bin/env bash
# Installs what building and testing tollgate needs on a fresh Debian machine
# with Rust: cmake (pingora's zlib-ng build), redis-server (store tests) and
# PostgreSQL (ledger tests; Debian keeps initdb in /usr/lib/postgresql/*/bin,
# off PATH).
set -euo pipefail
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
have_initdb=""
for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && have_initdb=1; done
command -v initdb >/dev/null 2>&1 && have_initdb=1
[ -n "$have_initdb" ] || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
