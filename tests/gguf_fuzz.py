"""Damaged liquidmetal GGUFs against the patched llama.cpp's loader (issue #27, class 6).

``damaged(base, out, seed, count)`` makes files from one valid GGUF, each with one to three
damages: a metadata number set to a hostile value (0, 1, huge, off by one: kernel size, SE
reduction and width, head counts, lengths, context), a float set to NaN/inf/0, a key renamed
away (so its default applies), a tensor's dimension, type or offset changed, a tensor renamed
to another's name (duplicated and missing), the header's counts changed, or the file cut short.
Each is edited in place through ``gguf.GGUFReader(mode="r+")``, so everything else stays valid.

``load(path)`` runs the file in a fresh process (llama-cpp-python, the patched build or the one
LLAMA_CPP_LIB_PATH names): load, then decode a few tokens. Outcomes: "ran", "refused" (llama.cpp
said why: the message is kept), "crash" (a signal, an ASan report, a GGML_ASSERT abort) or
"hang". Used by tests/runtime/llamacpp/test_hostile_gguf.py and, under AddressSanitizer, by
scripts/fuzz_gguf_asan.sh (``python tests/gguf_fuzz.py --asan``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARCH = "liquidmetal"
UINT_KEYS = ("context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
             "attention.head_count_kv", "attention.key_length", "attention.value_length", "rope.dimension_count",
             "token_mixing.kernel_size", "se.reduction", "se.hidden_size", "vocab_size")
FLOAT_KEYS = ("attention.layer_norm_rms_epsilon", "adaptive_norm.layer_norm_rms_epsilon", "rope.freq_base")
CRASH_EXIT = 86                 # ASAN_OPTIONS exitcode= in scripts/fuzz_gguf_asan.sh

# The child: load, then decode a few tokens (so that the graph is built from the loaded numbers).
LOADER = r"""
import sys
import llama_cpp
from llama_cpp import Llama
try:
    llm = Llama(model_path=sys.argv[1], n_ctx=32, n_batch=32, n_ubatch=32, n_threads=1, verbose=True,
                logits_all=False)
except Exception as exc:
    print("REFUSED", exc, flush=True)
    sys.exit(3)
n = llm.n_vocab()
llm.eval([i % n for i in (1, 5, 9, 13)])
llm.eval([2 % n])
print("RAN", flush=True)
"""


@dataclass
class Outcome:
    kind: str          # ran, refused, crash, hang
    detail: str        # llama.cpp's reason (refused), the signal or the sanitizer's line (crash)


def _hostile_uint(rng: random.Random, value: int) -> int:
    return rng.choice([0, 1, 2, 3, value - 1, value + 1, value * 2, value * 64, 1 << 16, (1 << 31) - 1,
                       (1 << 32) - 1, rng.randrange(0, 1 << 12)]) % (1 << 32)


def _damage(reader, rng: random.Random, size: int) -> str:
    """One in-place damage of an r+ reader's file; returns what it did ("truncate:N" is done by the caller)."""
    fields = reader.fields
    kind = rng.choice(["uint", "uint", "uint", "float", "rename_key", "dim", "dim", "type", "offset",
                       "dup_tensor", "rename_tensor", "counts", "truncate"])
    if kind == "uint":
        keys = [k for k in (f"{ARCH}.{k}" for k in UINT_KEYS) if k in fields]
        key = rng.choice(keys)
        part = fields[key].parts[fields[key].data[0]]
        new = _hostile_uint(rng, int(part[0]))
        part[0] = new
        return f"{key}={new}"
    if kind == "float":
        key = rng.choice([k for k in (f"{ARCH}.{k}" for k in FLOAT_KEYS) if k in fields])
        part = fields[key].parts[fields[key].data[0]]
        new = rng.choice([float("nan"), float("inf"), 0.0, -1.0, 1e30])
        part[0] = new
        return f"{key}={new}"
    if kind == "rename_key":               # the key is then absent: the loader's default applies
        keys = [k for k in fields if k.startswith(ARCH + ".")]
        key = rng.choice(keys)
        name = fields[key].parts[1]
        name[-1] = ord("~")
        return f"{key} removed"
    tensors = reader.tensors
    t = rng.choice(tensors)
    parts = t.field.parts                  # name length, name, n_dims, dims, type, offset
    if kind == "dim":
        dims = parts[3]
        i = rng.randrange(len(dims))
        new = rng.choice([0, 1, int(dims[i]) - 1, int(dims[i]) + 1, int(dims[i]) * 2, 1 << 40])
        dims[i] = max(new, 0)
        return f"{t.name} dim {i}={dims[i]}"
    if kind == "type":
        new = rng.choice([1, 2, 8, 12, 30, 39, 40, 99, 1 << 20])
        parts[4][0] = new
        return f"{t.name} type={new}"
    if kind == "offset":
        new = rng.choice([size, size * 4, 1 << 62, int(parts[5][0]) + 1, int(parts[5][0]) + 32])
        parts[5][0] = new
        return f"{t.name} offset={new}"
    if kind in ("dup_tensor", "rename_tensor"):
        same = [o for o in tensors if o is not t and len(o.name) == len(t.name)]
        if kind == "dup_tensor" and same:
            other = rng.choice(same)
            parts[1][:] = np.frombuffer(other.name.encode(), dtype=np.uint8)
            return f"{t.name} renamed to {other.name} (duplicated, and {t.name} missing)"
        parts[1][-1] = ord("~")
        return f"{t.name} renamed away (missing)"
    if kind == "counts":
        which = rng.choice(["GGUF.tensor_count", "GGUF.kv_count"])
        part = fields[which].parts[0]
        new = rng.choice([0, int(part[0]) - 1, int(part[0]) + 1, 1 << 40])
        part[0] = max(new, 0)
        return f"{which}={part[0]}"
    return f"truncate:{rng.randrange(24, size)}"


def damaged(base: Path, out: Path, seed: int, count: int):
    """Yield (path, description) for ``count`` damaged copies of ``base`` (deterministic in ``seed``)."""
    from gguf import GGUFReader

    rng = random.Random(seed)
    size = base.stat().st_size
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = out / f"damaged-{seed}-{i}.gguf"
        shutil.copy(base, path)
        reader = GGUFReader(path, "r+")
        done, cut = [], None
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            what = _damage(reader, rng, size)
            if what.startswith("truncate:"):
                cut = int(what.split(":")[1])
            done.append(what)
        reader.data.flush()
        del reader
        if cut is not None:
            with open(path, "r+b") as f:
                f.truncate(cut)
        yield path, "; ".join(done)


def load(path: Path, timeout: float = 60, env: dict | None = None) -> Outcome:
    """Run ``path`` in a fresh process: ran, refused (with llama.cpp's reason), crash or hang."""
    try:
        done = subprocess.run([sys.executable, "-c", LOADER, str(path)], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})}, errors="replace")
    except subprocess.TimeoutExpired:
        return Outcome("hang", f"no answer in {timeout:g} s")
    err = done.stderr
    if done.returncode < 0:
        return Outcome("crash", f"killed by {signal.Signals(-done.returncode).name}: " + _tail(err))
    if "ERROR: AddressSanitizer" in err or done.returncode == CRASH_EXIT or "GGML_ASSERT" in err:
        return Outcome("crash", _tail(err, "ERROR: AddressSanitizer") or _tail(err, "GGML_ASSERT") or _tail(err))
    if done.returncode == 0 and "RAN" in done.stdout:
        return Outcome("ran", "")
    if done.returncode == 3:
        return Outcome("refused", _reason(err) or done.stdout.strip())
    return Outcome("crash", f"exit {done.returncode}: " + _tail(err))


def _reason(err: str) -> str:
    """llama.cpp's own reason for refusing a file: the most specific line of its log."""
    lines = err.splitlines()
    for marker in ("error loading model:", "gguf_init_from_reader:", "gguf_init_from_file_impl:",
                   "check_tensor_dims:"):
        for line in lines:
            if marker in line and "failed to load model from" not in line:
                return line.split(marker, 1)[-1].strip()
    return ""


def _tail(err: str, marker: str | None = None) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    if marker:
        hit = [line for line in lines if marker in line]
        return hit[0].strip()[:300] if hit else ""
    return " | ".join(lines[-3:])[:300]


def fuzz(base: Path, *, seed: int = 0, count: int = 40, seconds: float = 300, env: dict | None = None,
         log=print) -> dict:
    """The bounded loop: at most ``count`` files and about ``seconds``; returns the tally and every crash."""
    tally = {"ran": 0, "refused": 0, "crash": 0, "hang": 0}
    crashes, unexplained = [], []
    deadline = time.monotonic() + seconds
    with tempfile.TemporaryDirectory() as tmp:
        for path, what in damaged(base, Path(tmp), seed, count):
            if time.monotonic() > deadline:
                break
            outcome = load(path, env=env)
            tally[outcome.kind] += 1
            if outcome.kind in ("crash", "hang"):
                crashes.append(f"{what}: {outcome.detail}")
            if outcome.kind == "refused" and not outcome.detail:
                unexplained.append(what)
            log(f"{outcome.kind:8s} {what}" + (f"  -> {outcome.detail[:160]}" if outcome.detail else ""))
            path.unlink()
    return {"tally": tally, "crashes": crashes, "refused_without_reason": unexplained}


def make_base(folder: Path) -> Path:
    """A valid f32 liquidmetal GGUF of a tiny random model (lmexport's own export)."""
    from lmexport.exporters.gguf.write import GGUFOptions, export_gguf
    from lmexport.modeling.tiny import make_model_folder

    model = make_model_folder(folder / "model", seed=0)
    out = folder / "base.gguf"
    export_gguf(model, out, GGUFOptions(outtype="f32"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, help="a valid liquidmetal GGUF (default: a tiny random model's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count", type=int, default=120)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--asan", action="store_true", help="report as the AddressSanitizer run")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.base or make_base(Path(tmp))
        check = load(base)
        if check.kind != "ran":
            print(f"the undamaged base file does not run: {check.kind} {check.detail}")
            return 2
        result = fuzz(base, seed=args.seed, count=args.count, seconds=args.seconds)
    label = "under AddressSanitizer" if args.asan else ""
    print(f"{sum(result['tally'].values())} damaged files {label}: {json.dumps(result['tally'])}")
    for crash in result["crashes"]:
        print("CRASH", crash)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["crashes"] else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
