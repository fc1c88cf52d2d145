#!/usr/bin/env bash
# Installs the real clients the end-to-end tests run against the gateway,
# pinned, into DEST (default target/real-clients), from the npm registry and
# PyPI only:
#
#   DEST/node/node_modules/.bin/claude   Claude Code (@anthropic-ai/claude-code)
#   DEST/venv/bin/llm                    the llm CLI (OpenAI API)
#   DEST/venv/bin/python -m anthropic    Anthropic's official Python SDK
#
# Installs nodejs/npm and python3-venv with apt-get when missing. Skips what
# is already installed at the pinned version, so a second run is instant.
set -euo pipefail
cd "$(dirname "$0")/.."

CLAUDE_CODE_VERSION=2.1.332
LLM_VERSION=0.36
ANTHROPIC_SDK_VERSION=2.17.0

DEST="${1:-target/real-clients}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
log() { echo "[real-clients] $*" >&2; }

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_install() {
  log "installing with apt-get: $*"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi

# Claude Code: the npm package is a wrapper; the program is a native binary
# in its optional dependency (@anthropic-ai/claude-code-linux-x64, also from
# the npm registry) that the package's postinstall links into place. So no
# --omit=optional and no --ignore-scripts. It embeds its own runtime: the
# "node >= 22" engines warning on older Node is harmless.
CLAUDE="$DEST/node/node_modules/.bin/claude"
have=""
[ -x "$CLAUDE" ] && have="$("$CLAUDE" --version 2>/dev/null | awk '{print $1}' || true)"
if [ "$have" != "$CLAUDE_CODE_VERSION" ]; then
  log "installing @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION"
  mkdir -p "$DEST/node"
  npm install --prefix "$DEST/node" --no-fund --no-audit --no-update-notifier \
    --foreground-scripts --save-exact "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >&2
  if ! "$CLAUDE" --version >/dev/null 2>&1; then
    log "the postinstall did not link the binary; running it by hand"
    (cd "$DEST/node/node_modules/@anthropic-ai/claude-code" && node install.cjs) >&2
  fi
fi

VENV="$DEST/venv"
have=""
[ -x "$VENV/bin/python" ] &&
  have="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("llm"))' 2>/dev/null || true)"
if [ "$have" != "$LLM_VERSION" ]; then
  if [ ! -x "$VENV/bin/python" ] && ! python3 -m venv "$VENV" 2>/dev/null; then
    apt_install python3-venv
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
  log "installing llm==$LLM_VERSION"
  "$VENV/bin/pip" install -q --disable-pip-version-check "llm==$LLM_VERSION" >&2
fi
have="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("anthropic"))' 2>/dev/null || true)"
if [ "$have" != "$ANTHROPIC_SDK_VERSION" ]; then
  log "installing anthropic==$ANTHROPIC_SDK_VERSION"
  "$VENV/bin/pip" install -q --disable-pip-version-check "anthropic==$ANTHROPIC_SDK_VERSION" >&2
fi

log "claude $("$CLAUDE" --version | awk '{print $1}'), llm $("$VENV/bin/llm" --version | awk '{print $NF}'), anthropic $("$VENV/bin/python" -c 'import anthropic; print(anthropic.__version__)')"
