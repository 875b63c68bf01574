#!/usr/bin/env bash
# Download the wheels of the plain install (`pip install .`, no extras) and of its build
# backend into a cache, so the plain-install test can build a fresh venv offline.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${LMEXPORT_CACHE:-$HOME/.cache/lmexport}/wheels-plain
mkdir -p "$WHEELS"
python -m pip download --quiet --disable-pip-version-check -d "$WHEELS" . "setuptools>=77" 2>&1 \
  | grep -v -e "^WARNING: Location" -e "BuildBackendWarning" || true
echo "plain-install wheels in $WHEELS ($(ls "$WHEELS" | wc -l) files)"
