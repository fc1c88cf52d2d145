#!/usr/bin/env bash
# Builds tollgate and starts it on conf/tollgate.yaml with the in-process
# store. On first run it generates a development key pair in keys/ and prints
# a development token.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --bin tollgate
bin=target/debug/tollgate
if [ ! -f keys/private.pem ]; then
  "$bin" keygen --dir keys --kid k1
fi
# The example config names real providers; without their keys the gateway
# still starts (requests then fail upstream with the provider's 401).
export ANTHROPIC_API_KEY="${ANTHROPIC_API_KEY:-dev-placeholder-anthropic-key}"
export OPENAI_API_KEY="${OPENAI_API_KEY:-dev-placeholder-openai-key}"
export ANTHROPIC_API_KEY_2="${ANTHROPIC_API_KEY_2:-dev-placeholder-anthropic-key-2}"
export AZURE_OPENAI_KEY="${AZURE_OPENAI_KEY:-dev-placeholder-azure-key}"
"$bin" check -c conf/tollgate.yaml
echo "development token (sub=dev, role=admin, 24h):"
"$bin" token issue -c conf/tollgate.yaml --sub dev --role admin --ttl 24h
echo
echo "proxy on 127.0.0.1:8080, admin on 127.0.0.1:8081, metrics on 127.0.0.1:9464 (Ctrl-C stops)"
exec "$bin" serve -c conf/tollgate.yaml
