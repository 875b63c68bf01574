"""Running the lmexport CLI from the measurement scripts (examples/smollm2/measure.py,
benchmarks/quant_table.py): one command, one export, the size of an artifact, the README block
a script regenerates."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def size_mb(path: Path) -> float:
    """model.onnx + model.onnx.data of an ONNX folder, or the file (GGUF, .pte)."""
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.name.startswith("model.onnx")]
    return sum(p.stat().st_size for p in files) / 1e6


def run(*args, alone: bool = False) -> subprocess.CompletedProcess:
    """One lmexport command. Two run at a time (``alone=False``): OpenMP threads then wait passively,
    or they spin against each other; a benchmark runs alone with the default policy, since passive
    waiting costs llama.cpp's per-op barriers ~7x its decode speed here (docs/llamacpp.md)."""
    cmd = [sys.executable, "-m", "lmexport.cli", *map(str, args)]
    print("$ lmexport " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    if alone:
        env.pop("OMP_WAIT_POLICY")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)


def lmexport(*args, ok=(0,), alone: bool = False) -> str:
    done = run(*args, alone=alone)
    if done.returncode not in ok:
        raise SystemExit(f"lmexport {' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def export(kind: str, model: Path, target: Path, extra: list[str], reuse: bool) -> dict:
    """``lmexport KIND MODEL -o TARGET --overwrite EXTRA``, unless ``reuse`` and TARGET exists."""
    if reuse and target.exists():
        return {"export": "reused"}
    return {"export": lmexport(kind, model, "-o", target, "--overwrite", *extra)}


def replace_block(readme: Path, begin: str, end: str, block: str) -> None:
    """Replace what lies between the ``begin`` and ``end`` markers of ``readme`` (both kept) with
    ``block``, atomically; a README without both markers, in order, is an error."""
    text = readme.read_text(encoding="utf-8")
    if begin not in text or end not in text or text.index(begin) > text.index(end):
        raise SystemExit(f"{readme} has no {begin} ... {end} block")
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    tmp = readme.with_name(readme.name + ".tmp")
    tmp.write_text(f"{head}{begin}\n{block.strip()}\n{end}{tail}", encoding="utf-8")
    tmp.replace(readme)
