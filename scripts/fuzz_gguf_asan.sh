#!/usr/bin/env bash
# Hostile liquidmetal GGUFs against the patched llama.cpp built with AddressSanitizer (issue #27).
#
# Builds libllama from the same sdist and liquidmetal.patch as `lmexport llamacpp build`, with
# -DLLAMA_SANITIZE_ADDRESS=ON, in its own cached folder ($LMEXPORT_CACHE or ~/.cache/lmexport)/asan
# (incremental after the first build), then runs the fuzz loop of tests/gguf_fuzz.py with that
# library (LLAMA_CPP_LIB_PATH; libasan preloaded into the Python that hosts it). Every damaged file
# must be refused or run; an ASan report or a signal is a crash, and the script exits 1.
# Not part of CI (several minutes of compiling); run it after changing the loader part of the patch.
#
#   bash scripts/fuzz_gguf_asan.sh [--count N] [--seconds S] [--seed K]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
CACHE=${LMEXPORT_CACHE:-$HOME/.cache/lmexport}/asan
mkdir -p "$CACHE"

"$PY" - "$CACHE" <<'PY'
import sys, tempfile
from pathlib import Path
from lmexport.runtime.llamacpp import build as b
cache = Path(sys.argv[1])
sdist = b.download_sdist(b.cache_root())
with tempfile.TemporaryDirectory(dir=cache) as tmp:
    fresh = b._patched_tree(sdist, Path(tmp)) / "vendor" / "llama.cpp"
    src = cache / "src"
    if src.exists():
        print(f"asan source updated ({b._sync_tree(fresh, src)} file(s) changed)")
    else:
        fresh.replace(src)
PY

# configured every time (cheap when cached): a file the patch adds is picked up by llama.cpp's glob
cmake -S "$CACHE/src" -B "$CACHE/build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DBUILD_SHARED_LIBS=ON \
  -DLLAMA_SANITIZE_ADDRESS=ON -DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF \
    "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
    "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" >"$CACHE/configure.log"
nice -n 19 cmake --build "$CACHE/build" --target llama -j "${JOBS:-2}" >"$CACHE/build.log"
LIB=$(dirname "$(find "$CACHE/build" -name 'libllama.so' | head -1)")
echo "ASan libllama: $LIB"

export LLAMA_CPP_LIB_PATH="$LIB"
export LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"     # its libggml*.so beside it
# libstdc++ too: Python is no C++ program, and ASan's __cxa_throw interceptor needs the real one loaded
export LD_PRELOAD="$(${CC:-gcc} -print-file-name=libasan.so) $(${CXX:-g++} -print-file-name=libstdc++.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=86:allocator_may_return_null=1"
exec "$PY" tests/gguf_fuzz.py --asan "$@"
