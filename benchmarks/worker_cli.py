"""The command line every benchmark worker (``worker_*.py``) takes, and how it runs: the shared
measurement protocol (``lmexport.bench.protocol``) with its result written as JSON, or the quality
pass's next-token logits saved for ``run.py`` to compare. Stdlib and numpy only, like the protocol:
the workers run it from their own virtual environments (optimum-onnx, llama-cpp-python).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lmexport.bench.protocol import Workload, quality_logits, run_protocol  # noqa: E402


def worker_parser(artifact: str) -> argparse.ArgumentParser:
    """The command line every benchmark worker (benchmarks/worker_*.py) takes."""
    ap = argparse.ArgumentParser()
    ap.add_argument(artifact)
    ap.add_argument("--out", help="Where the timing result goes (JSON).")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--logits", default=None,
                    help="Instead of timing, write the quality pass's next-token logits here (.npy).")
    return ap


def run_worker(load, args, *, artifact: str, backend: str, variant: str, versions: dict[str, str]) -> None:
    """Measure with the shared protocol and write the result JSON to ``args.out``
    (with ``--logits``: run the quality pass instead and save its logits)."""
    if args.logits:
        stepper, vocab_size = load()
        np.save(args.logits, quality_logits(stepper, vocab_size))
        return
    if not args.out:
        raise SystemExit("give --out (the timing result) or --logits (the quality pass)")
    workload = Workload(args.prompt_tokens, args.new_tokens, args.batch, args.repeats)
    result = run_protocol(load, workload, artifact=artifact, backend=backend, variant=variant, device="cpu",
                          threads=args.threads, versions=versions,
                          progress=lambda m: print(m, file=sys.stderr, flush=True))
    Path(args.out).write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
