#!/usr/bin/env bash
# Node and the npm packages the transformers.js tests drive (idempotent).
#   * node/npm: from Debian packages when missing (scripts/system_deps.sh);
#   * packages: `npm ci` of tests/exporters/onnx/node/package-lock.json into
#     ~/.cache/lmexport/node/<lockfile sha256>/ (reruns with the same lockfile install nothing),
#     linked as tests/exporters/onnx/node/node_modules.
# ONNXRUNTIME_NODE_INSTALL=skip: onnxruntime-node's postinstall would download GPU binaries;
# the CPU binaries ship in the npm package itself. The browser tests use puppeteer-core, which
# never downloads a browser (PUPPETEER_SKIP_DOWNLOAD=1 all the same): they drive the system's
# Chromium (scripts/system_deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
NODE_DIR=tests/exporters/onnx/node

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  bash scripts/system_deps.sh     # Debian's nodejs, npm and chromium (apt-get, as root or via sudo)
fi

HASH=$(sha256sum "$NODE_DIR/package-lock.json" | cut -c1-16)
CACHE="${LMEXPORT_CACHE:-$HOME/.cache/lmexport}/node/$HASH"
if [ ! -f "$CACHE/.installed" ]; then
  rm -rf "$CACHE.tmp"
  mkdir -p "$CACHE.tmp"
  cp "$NODE_DIR/package.json" "$NODE_DIR/package-lock.json" "$CACHE.tmp/"
  (cd "$CACHE.tmp" && ONNXRUNTIME_NODE_INSTALL=skip PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
  touch "$CACHE.tmp/.installed"
  rm -rf "$CACHE"
  mv "$CACHE.tmp" "$CACHE"
fi
ln -sfn "$CACHE/node_modules" "$NODE_DIR/node_modules"
echo "node $(node --version), transformers.js packages in $CACHE"
