#!/usr/bin/env bash
# The main job on the bundled model: set up, export ONNX (fp32, int4) and GGUF
# (f32, q8_0), generate, and check parity of each export against PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
MODEL=${MODEL:-examples/liquid-metal-tiny}
OUT=${OUT:-out}
mkdir -p "$OUT"
set -x
lmexport onnx "$MODEL" -o "$OUT/onnx-fp32" --overwrite
lmexport onnx "$MODEL" -o "$OUT/onnx-int4" --quantize int4 --overwrite
lmexport gguf "$MODEL" -o "$OUT/model-f32.gguf" --outtype f32 --overwrite
lmexport gguf "$MODEL" -o "$OUT/model-q8_0.gguf" --outtype q8_0 --overwrite
lmexport generate "$OUT/onnx-fp32" --prompt "def read_file(path):" --prompt "The module" --max-new-tokens 48 --stats
lmexport generate "$OUT/onnx-int4" --prompt "def read_file(path):" --max-new-tokens 48
lmexport parity "$MODEL" "$OUT/onnx-fp32"
lmexport parity "$MODEL" "$OUT/onnx-int4"
lmexport parity "$MODEL" "$OUT/model-f32.gguf"
lmexport parity "$MODEL" "$OUT/model-q8_0.gguf"
