#!/usr/bin/env bash
# The test command: set up (idempotent), then run the whole suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_node.sh        # node + transformers.js for tests/exporters/onnx/test_transformersjs.py
. .venv/bin/activate
export LMEXPORT_REQUIRE_NODE=1    # set up above: those tests must run, not skip
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
python -m pytest -q "$@"
