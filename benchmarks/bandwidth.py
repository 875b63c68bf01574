"""Measured memory read bandwidth: numpy sums over an array far larger than the caches.

    python benchmarks/bandwidth.py [--mib 1024] [--repeats 7] [--threads 2] [--pages huge|small]

One thread sums the whole array; then ``threads`` threads each sum a slice at the
same time (numpy releases the GIL in reductions). Each is repeated and the best
repeat kept (the least disturbed one: bandwidth is a ceiling). Prints one JSON
object; ``bytes_per_s`` is the larger of the two, the figure the bound uses.

Page size matters (TLB misses): numpy asks the kernel for transparent huge pages on large
arrays (``madvise``), which ONNX Runtime's and llama.cpp's weights do not get by default.
``--pages small`` turns numpy's request off, so the array sits in 4 KiB pages (unless the kernel's
THP mode is ``always``); ``--pages huge`` keeps it. The output says what the array really got
(``huge_fraction``, from ``/proc/self/smaps_rollup``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lmexport.bench.memory import proc_kb  # noqa: E402  (stdlib and numpy only)


def best_rate(fn, nbytes: int, repeats: int) -> tuple[float, list[float]]:
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(nbytes / (time.perf_counter() - t0))
    return max(rates), rates


def set_numpy_hugepages(on: bool) -> None:
    core = getattr(np, "_core", None) or np.core
    core.multiarray._set_madvise_hugepage(on)


def measure(mib: int, repeats: int, threads: int, pages: str = "huge") -> dict:
    set_numpy_hugepages(pages == "huge")
    a = np.ones(mib * (1 << 20) // 4, dtype=np.float32)   # touched, so every page is resident
    nbytes = a.nbytes
    a.sum()
    single, single_all = best_rate(a.sum, nbytes, repeats)
    parts = np.array_split(a, threads)
    with ThreadPoolExecutor(threads) as pool:
        def parallel():
            list(pool.map(np.sum, parts))
        parallel()
        multi, multi_all = best_rate(parallel, nbytes, repeats)
    return {"array_mib": mib, "repeats": repeats, "threads": threads, "pages": pages,
            "huge_fraction": min(1.0, (proc_kb("/proc/self/smaps_rollup", "AnonHugePages") or 0.0) * 1024 / nbytes),
            "single_thread_bytes_per_s": single, "multi_thread_bytes_per_s": multi,
            "bytes_per_s": max(single, multi),
            "single_thread_all": single_all, "multi_thread_all": multi_all}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pages", choices=["huge", "small"], default="huge")
    args = ap.parse_args()
    print(json.dumps(measure(args.mib, args.repeats, args.threads, args.pages)))


if __name__ == "__main__":
    main()
