#!/usr/bin/env bash
# Installs the real clients the end-to-end tests run against the gateway,
# pinned, into DEST (default target/real-clients), from the npm registry and
# PyPI only:
#
#   DEST/node/node_modules/.bin/claude   Claude Code (@anthropic-ai/claude-code)
#   DEST/venv/bin/llm                    the llm CLI (OpenAI API)
#   DEST/venv/bin/python -m anthropic    Anthropic's official Python SDK
#   DEST/venv/bin/python -m openai       OpenAI's official Python SDK
#   DEST/venv/bin/python -m httpx        httpx with HTTP/2 (the h2 package)
#
# Installs nodejs/npm and python3-venv with apt-get when missing. Skips what
# is already installed at the pinned version, so a second run is instant.
set -euo pipefail
cd "$(dirname "$0")/.."

CLAUDE_CODE_VERSION=2.1.332
LLM_VERSION=0.36
ANTHROPIC_SDK_VERSION=2.17.0
OPENAI_SDK_VERSION=3.63.0
HTTPX_VERSION=0.28.1
H2_VERSION=4.4.1

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

# Python packages pinned to a version, each installed when it differs.
pip_pin() {
  local dist="$1" version="$2" spec="$3"
  local have
  have="$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$dist'))" 2>/dev/null || true)"
  if [ "$have" != "$version" ]; then
    log "installing $spec"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$spec" >&2
  fi
}
pip_pin openai "$OPENAI_SDK_VERSION" "openai==$OPENAI_SDK_VERSION"
pip_pin httpx "$HTTPX_VERSION" "httpx[http2]==$HTTPX_VERSION"
pip_pin h2 "$H2_VERSION" "h2==$H2_VERSION"

log "claude $("$CLAUDE" --version | awk '{print $1}'), llm $("$VENV/bin/llm" --version | awk '{print $NF}'), anthropic $("$VENV/bin/python" -c 'import anthropic; print(anthropic.__version__)'), openai $("$VENV/bin/python" -c 'import openai; print(openai.__version__)'), httpx $("$VENV/bin/python" -c 'import httpx, h2; print(httpx.__version__, "h2", h2.__version__)')"
