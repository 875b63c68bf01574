"""Which ops dominate an ONNX decode step, and the prefill: ORT's profiler, summed by op type.

    python benchmarks/profile_onnx.py ONNX_DIR [--prompt-tokens 128] [--steps 16] [--json]

Runs a prefill and ``--steps`` decode calls with profiling on (state fed back by the
runtime's stepper), then sums the kernel time of every node of the decode runs
only by op type. The share is of node time (what the graph's kernels cost);
the remainder of a step's wall time is session overhead and state copies, given
as ``overhead_ms_per_step``. The prefill call (``prefill``) is summed the same way.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def profile(folder: Path, prompt_tokens: int, steps: int, threads: int | None) -> dict:
    import onnxruntime as ort

    from lmexport.bench.protocol import greedy, prompt_ids
    from lmexport.runtime.ort import OnnxEngine

    with tempfile.TemporaryDirectory(prefix="lmexport-profile-") as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        if threads:
            options.intra_op_num_threads = threads
        stepper = OnnxEngine(folder, device="cpu", threads=threads)
        # The runtime's Session takes no profiling switch: swap in a profiling session
        # over the same file; names and state feeding stay the runtime's.
        rt = stepper.session
        rt.session = ort.InferenceSession(str(Path(folder) / rt.manifest.model_file), options,
                                          providers=["CPUExecutionProvider"])
        vocab = stepper.info.vocab_size
        ids = prompt_ids(1, prompt_tokens, vocab)
        total = prompt_tokens + steps
        mask = np.ones((1, total), dtype=np.int64)
        stepper.reset(1)
        token = greedy(stepper, ids, mask[:, :prompt_tokens], np.arange(prompt_tokens, dtype=np.int64)[None])
        wall = []
        for i in range(steps):
            t = prompt_tokens + i
            t0 = time.perf_counter()
            token = greedy(stepper, token.reshape(1, 1), mask[:, :t + 1], np.array([[t]], dtype=np.int64))
            wall.append(time.perf_counter() - t0)
        trace = json.loads(Path(rt.session.end_profiling()).read_text())

    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    decode_runs = runs[-steps:]
    node_ms, ops = ops_in(trace, [(e["ts"], e["ts"] + e["dur"]) for e in decode_runs], steps)
    run_ms = sum(e["dur"] for e in decode_runs) / 1000.0 / steps
    prefill_run = runs[-steps - 1]
    prefill_node_ms, prefill_ops = ops_in(trace, [(prefill_run["ts"], prefill_run["ts"] + prefill_run["dur"])], 1)
    return {"folder": str(folder), "prompt_tokens": prompt_tokens, "steps": steps,
            "wall_ms_per_step": 1000.0 * float(np.median(wall)), "run_ms_per_step": run_ms,
            "node_ms_per_step": node_ms, "overhead_ms_per_step": run_ms - node_ms, "ops": ops,
            "prefill": {"run_ms": prefill_run["dur"] / 1000.0, "node_ms": prefill_node_ms, "ops": prefill_ops}}


def ops_in(trace: list[dict], windows: list[tuple[float, float]], calls: int) -> tuple[float, list[dict]]:
    """(node ms per call, ops by time) for the kernels that ran inside ``windows``."""
    by_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if not any(a <= e["ts"] <= b for a, b in windows):
            continue
        op = e.get("args", {}).get("op_name", "?")
        by_op[op][0] += e["dur"] / 1000.0
        by_op[op][1] += 1
    node_ms = sum(v[0] for v in by_op.values())
    ops = sorted(({"op_type": op, "ms_per_step": ms / calls, "nodes_per_step": n / calls,
                   "share": ms / node_ms if node_ms else 0.0} for op, (ms, n) in by_op.items()),
                 key=lambda o: -o["ms_per_step"])
    return node_ms / calls, ops


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = profile(args.folder, args.prompt_tokens, args.steps, args.threads)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['folder']}: {result['wall_ms_per_step']:.2f} ms per decode step (wall), "
          f"{result['node_ms_per_step']:.2f} ms in nodes, {result['overhead_ms_per_step']:.2f} ms session overhead")
    for op in result["ops"][:15]:
        print(f"  {op['op_type']:<28} {op['share'] * 100:5.1f}%  {op['ms_per_step']:7.2f} ms  "
              f"{op['nodes_per_step']:5.0f} nodes")


if __name__ == "__main__":
    main()
