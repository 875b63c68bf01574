#!/usr/bin/env bash
# The test command: set up (idempotent), then run the whole suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_deps.sh          # compilers, cmake, node (only what is missing)
bash scripts/setup.sh
. .venv/bin/activate
bash scripts/plain_wheels.sh          # wheels for the plain-install test (a fresh venv built offline)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
python -m pytest -q "$@"
