#!/usr/bin/env bash
# Create .venv and install lmexport with everything the exporters and tests need.
# torch is installed first, pinned to the CPU build that this project is tested
# with: a bare `torch` requirement can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[export,train,test]"
echo "lmexport installed in $(pwd)/.venv ($(python -c 'import torch; print("torch", torch.__version__)'))"
