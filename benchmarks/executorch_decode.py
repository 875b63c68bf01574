"""Decode speed of an ExecuTorch .pte against an ONNX folder of the same model, in one run.

    python benchmarks/executorch_decode.py --pte out/tiny.pte --onnx out/onnx [--threads 2]
        [--prompt-tokens 32] [--new-tokens 64] [--repeats 3]

Each engine: prefill a prompt of --prompt-tokens ids (from the sidecar's vocabulary, fixed), then
--new-tokens greedy decode steps, one token per call, the state carried; the best of --repeats
timings of the decode loop (and of the prefill, after a warm-up call), the engines alternating. Both sides run one after the other in this process on the same
threads setting, and the ratio is printed against ONNX Runtime measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def decode_pte(path: Path, prompt: list[int], new: int, threads: int | None) -> tuple[float, float, list[int]]:
    from lmexport.exporters.executorch.engine import ExecutorchEngine

    eng = ExecutorchEngine(path, threads=threads)
    eng.logits_for(prompt, 0)                         # warm-up; the timed prefill starts over at position 0
    t0 = time.perf_counter()
    logits = eng.logits_for(prompt, 0)[-1]
    prefill = time.perf_counter() - t0
    out = []
    t1 = time.perf_counter()
    for i in range(new):
        tok = int(logits.argmax())
        out.append(tok)
        logits = eng.logits_for([tok], len(prompt) + i)[-1]
    return prefill, time.perf_counter() - t1, out


def decode_onnx(folder: Path, prompt: list[int], new: int, threads: int | None) -> tuple[float, float, list[int]]:
    from lmexport.runtime.ort import Session

    stepper = Session(folder, threads=threads).stepper()
    ids = np.asarray([prompt], dtype=np.int64)
    mask = np.ones_like(ids)
    stepper.reset(1)
    stepper.step(ids, mask, np.arange(len(prompt), dtype=np.int64)[None])   # warm-up
    stepper.reset(1)
    t0 = time.perf_counter()
    logits = stepper.step(ids, mask, np.arange(len(prompt), dtype=np.int64)[None])[0, -1]
    prefill = time.perf_counter() - t0
    out = []
    t1 = time.perf_counter()
    for i in range(new):
        tok = int(logits.argmax())
        out.append(tok)
        mask = np.ones((1, len(prompt) + i + 1), dtype=np.int64)
        logits = stepper.step(np.asarray([[tok]], dtype=np.int64), mask,
                              np.asarray([[len(prompt) + i]], dtype=np.int64))[0, -1]
    return prefill, time.perf_counter() - t1, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pte", type=Path, required=True, action="append")
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from lmexport.exporters.executorch import sidecar

    vocab = int(sidecar.read(args.pte[0])["source"]["config"]["vocab_size"])
    prompt = [int(x) for x in (np.arange(args.prompt_tokens) * 37 + 11) % vocab]
    runs = [("onnx", args.onnx, decode_onnx)] + [("pte", p, decode_pte) for p in args.pte]
    best: list = [None] * len(runs)
    for _ in range(args.repeats):                     # alternate the engines, keep each one's best
        for i, (kind, path, fn) in enumerate(runs):
            prefill, decode, tokens = fn(path, prompt, args.new_tokens, args.threads)
            if best[i] is None or decode < best[i][1]:
                best[i] = (min(prefill, best[i][0]) if best[i] else prefill, decode, tokens)
    rows = [{"kind": kind, "path": str(path), "prefill_ms": b[0] * 1e3,
             "decode_tokens_per_s": args.new_tokens / b[1], "tokens": b[2]} for (kind, path, _), b in zip(runs, best)]
    base = rows[0]["decode_tokens_per_s"]
    for r in rows:
        r["vs_onnx"] = r["decode_tokens_per_s"] / base
        print(f"{r['kind']:5s} {Path(r['path']).name:28s} prefill {r['prefill_ms']:8.1f} ms  "
              f"decode {r['decode_tokens_per_s']:8.1f} tokens/s  x{r['vs_onnx']:.2f} vs ONNX Runtime")
    print(json.dumps([{k: v for k, v in r.items() if k != "tokens"} for r in rows]))


if __name__ == "__main__":
    main()
