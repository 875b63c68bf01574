#!/usr/bin/env bash
# Create .venv-optimum for lmexport.optimum and its tests (tests/optimum/).
# optimum-onnx 0.1.0 pins transformers<4.58, which the main .venv (transformers 5)
# cannot share, so it gets its own environment. torch goes in first, pinned to the
# CPU build: a bare torch requirement can pull a multi-GB CUDA build.
# Idempotent: a stamp keyed on pyproject.toml and this script makes a rerun instant.
# pip's output goes to .venv-optimum.log; its last lines are shown when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-optimum
LOG=$VENV.log
STAMP=$VENV/.lmexport-ready
KEY=$(cat pyproject.toml scripts/setup_optimum.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ]; then
  exit 0
fi
started=$(date +%s)
: > "$LOG"
step() {
  if ! "$@" >> "$LOG" 2>&1; then
    echo "setup_optimum.sh: '$*' failed; the end of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
}
if [ ! -x "$VENV/bin/python" ]; then
  step "$PY" -m venv "$VENV"
fi
step "$VENV/bin/python" -m pip install --quiet --upgrade pip
step "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
step "$VENV/bin/python" -m pip install --quiet -e ".[export,optimum,test]"
echo "$KEY" > "$STAMP"
versions=$("$VENV/bin/python" -c 'import importlib.metadata as m
print(", ".join(p + " " + m.version(p) for p in ("optimum-onnx", "optimum", "transformers", "onnxruntime", "torch")))')
echo "optimum environment ready in $(pwd)/$VENV ($(( $(date +%s) - started )) s; $versions)"
