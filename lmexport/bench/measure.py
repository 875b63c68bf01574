"""The measurement protocol shared by every benchmark row: stdlib and numpy only.

A row is anything that can ``reset(batch)`` its state and ``step(ids, mask, positions)``
one call (prefill or decode), returning the greedy next token of every sequence.
``measure`` drives it the same way for every backend:

1. one warm-up pass (prefill, then ``min(new_tokens, WARMUP_DECODE_STEPS)`` decode
   steps), untimed;
2. ``repeats`` timed passes, each from empty state: a prefill of ``prompt_tokens``
   tokens (the prefill latency), then ``new_tokens`` decode calls of one token each,
   feeding back the state (never recomputing the prefix) and the greedy token.

Decode tokens/s counts tokens generated across the batch per second of decode
calls; each statistic is given as median, min and max over the repeats.

This module is imported by the optimum-onnx and llama.cpp workers of
``benchmarks/run.py`` from their own virtual environments, so it must keep to the
standard library and numpy (``lmexport/bench/__init__.py`` imports nothing else).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

WARMUP_DECODE_STEPS = 4
FIRST_PROMPT_ID = 4  # skip <unk>, <s>, </s>, <pad> when drawing prompt ids


class Stepper(Protocol):
    def reset(self, batch: int) -> None: ...

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray: ...


class LogitsStepper(Stepper, Protocol):
    def logits(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The same call as ``step``, returning the last position's logits [batch, vocab] as numpy."""


@dataclass(frozen=True)
class Workload:
    """How much work one measurement does (the CLI's and run.py's knobs)."""

    prompt_tokens: int = 128
    new_tokens: int = 64
    batch: int = 1
    repeats: int = 5
    seed: int = 0

    def problems(self) -> list[str]:
        out = []
        for name in ("prompt_tokens", "new_tokens", "batch", "repeats"):
            if getattr(self, name) < 1:
                out.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        return out


@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float
    values: tuple[float, ...] = ()   # one per timed repeat, in order

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        return cls(statistics.median(values), min(values), max(values), tuple(values))

    @property
    def spread_pct(self) -> float:
        """(max - min) / median, in percent."""
        return 100.0 * (self.max - self.min) / self.median if self.median else 0.0

    def to_json(self) -> dict:
        return {"median": self.median, "min": self.min, "max": self.max, "spread_pct": self.spread_pct,
                "values": list(self.values)}


@dataclass
class BenchResult:
    artifact: str
    backend: str                  # "onnxruntime", "pytorch", "optimum-onnx", "llama.cpp"
    variant: str                  # "fp32", "int4", "bf16", "q4_0", ...
    device: str
    threads: int | None
    prompt_tokens: int
    new_tokens: int
    batch: int
    repeats: int
    load_s: float
    prefill_ms: Spread
    decode_tokens_per_s: Spread
    decode_ms_per_step: Spread
    peak_rss_mb: float
    rss_after_load_mb: float
    versions: dict[str, str] = field(default_factory=dict)
    huge_mapped_mb: float | None = None   # resident memory mapped by 2 MiB pages at the end (Linux)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.batch * self.prompt_tokens / (self.prefill_ms.median / 1000.0)

    def to_json(self) -> dict:
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            attr = getattr(self, key)
            out[key] = attr.to_json() if isinstance(attr, Spread) else value
        out["prefill_tokens_per_s"] = self.prefill_tokens_per_s
        return out


# ---------------------------------------------------------------- memory
def rss_mb() -> float:
    """Resident set size now, in MiB (Linux /proc; elsewhere the peak)."""
    value = proc_kb("/proc/self/status", "VmRSS")
    return value / 1024.0 if value is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB, since the last ``reset_peak_rss``."""
    value = proc_kb("/proc/self/status", "VmHWM")
    if value is not None:
        return value / 1024.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if platform.system() == "Darwin" else peak / 1024.0


def reset_peak_rss() -> bool:
    """Restart the peak-RSS counter (Linux: write 5 to /proc/self/clear_refs). False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def huge_mapped_mb() -> float | None:
    """Memory this process maps with huge pages now, in MiB: anonymous THP plus PMD-mapped file pages
    (Linux ``/proc/self/smaps_rollup``; None elsewhere). Tells which bandwidth bounds a row."""
    value = proc_kb("/proc/self/smaps_rollup", "AnonHugePages", "FilePmdMapped", "ShmemPmdMapped")
    return value / 1024.0 if value is not None else None


def proc_kb(path: str, *keys: str) -> float | None:
    """The sum of the ``key: N kB`` fields ``keys`` of a /proc file; None if it cannot be read or has none."""
    total, found = 0.0, False
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in keys:
                    total += float(rest.split()[0])
                    found = True
    except OSError:
        return None
    return total if found else None


# ---------------------------------------------------------------- protocol
def prompt_ids(batch: int, length: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """Deterministic prompt ids [batch, length] (int64), avoiding the special tokens."""
    rng = np.random.default_rng(seed)
    low = FIRST_PROMPT_ID if vocab_size > FIRST_PROMPT_ID + 1 else 0
    return rng.integers(low, vocab_size, size=(batch, length), dtype=np.int64)


def _one_pass(stepper: Stepper, ids: np.ndarray, new_tokens: int,
              sync: Callable[[], None]) -> tuple[float, list[float]]:
    """One prefill and ``new_tokens`` decode calls; returns (prefill s, [decode s per call])."""
    batch, prompt = ids.shape
    total = prompt + new_tokens
    mask = np.ones((batch, total), dtype=np.int64)
    positions = np.tile(np.arange(total, dtype=np.int64), (batch, 1))
    stepper.reset(batch)
    t0 = time.perf_counter()
    token = stepper.step(ids, mask[:, :prompt], np.ascontiguousarray(positions[:, :prompt]))
    sync()
    prefill = time.perf_counter() - t0
    steps = []
    for i in range(new_tokens):
        t = prompt + i
        t0 = time.perf_counter()
        token = stepper.step(np.asarray(token, dtype=np.int64).reshape(batch, 1), mask[:, :t + 1],
                             np.ascontiguousarray(positions[:, t:t + 1]))
        sync()
        steps.append(time.perf_counter() - t0)
    return prefill, steps


def measure(stepper: Stepper, vocab_size: int, workload: Workload, *, sync: Callable[[], None] = lambda: None,
            progress: Callable[[str], None] | None = None) -> tuple[Spread, Spread, Spread]:
    """Warm up, then time ``workload.repeats`` passes: (prefill ms, decode tokens/s, decode ms/step)."""
    ids = prompt_ids(workload.batch, workload.prompt_tokens, vocab_size, workload.seed)
    _one_pass(stepper, ids, min(workload.new_tokens, WARMUP_DECODE_STEPS), sync)
    prefills, rates, per_step = [], [], []
    for r in range(workload.repeats):
        prefill, steps = _one_pass(stepper, ids, workload.new_tokens, sync)
        decode = sum(steps)
        prefills.append(prefill * 1000.0)
        rates.append(workload.batch * len(steps) / decode)
        per_step.append(statistics.median(steps) * 1000.0)
        if progress:
            progress(f"repeat {r + 1}/{workload.repeats}: prefill {prefill * 1000:.1f} ms, "
                     f"decode {rates[-1]:.2f} tokens/s")
    return Spread.of(prefills), Spread.of(rates), Spread.of(per_step)


def run_protocol(load: Callable[[], tuple[Stepper, int]], workload: Workload, *, artifact: str, backend: str,
                 variant: str, device: str, threads: int | None, versions: dict[str, str] | None = None,
                 sync: Callable[[], None] = lambda: None,
                 progress: Callable[[str], None] | None = None) -> BenchResult:
    """Time ``load()`` (returns the stepper and the vocabulary size), then ``measure``."""
    reset_peak_rss()
    t0 = time.perf_counter()
    stepper, vocab_size = load()
    sync()
    load_s = time.perf_counter() - t0
    after_load = rss_mb()
    prefill, rate, per_step = measure(stepper, vocab_size, workload, sync=sync, progress=progress)
    return BenchResult(artifact=artifact, backend=backend, variant=variant, device=device, threads=threads,
                       prompt_tokens=workload.prompt_tokens, new_tokens=workload.new_tokens,
                       batch=workload.batch, repeats=workload.repeats, load_s=load_s, prefill_ms=prefill,
                       decode_tokens_per_s=rate, decode_ms_per_step=per_step, peak_rss_mb=peak_rss_mb(),
                       rss_after_load_mb=after_load, versions=dict(versions or {}),
                       huge_mapped_mb=huge_mapped_mb())


# ---------------------------------------------------------------- quality
QUALITY_PROMPTS = 4
QUALITY_PROMPT_TOKENS = 32
QUALITY_NEXT_TOKENS = 16
QUALITY_SEED = 1


def quality_logits(stepper: LogitsStepper, vocab_size: int, *, prompts: int = QUALITY_PROMPTS,
                   prompt_tokens: int = QUALITY_PROMPT_TOKENS, next_tokens: int = QUALITY_NEXT_TOKENS,
                   seed: int = QUALITY_SEED) -> np.ndarray:
    """Next-token logits on fixed ids, for comparing rows with a reference: float32
    ``[prompts * (1 + next_tokens), vocab]``.

    Each prompt is a prefill of ``prompt_tokens`` fixed ids (its last position gives the first row),
    then ``next_tokens`` decode calls that feed the following fixed ids (teacher-forced, not the
    row's own greedy tokens, so every row sees the same inputs and the decode path with its carried
    state is what is compared)."""
    ids = prompt_ids(prompts, prompt_tokens + next_tokens, vocab_size, seed)
    total = ids.shape[1]
    mask = np.ones((1, total), dtype=np.int64)
    positions = np.arange(total, dtype=np.int64)[None, :]
    rows = []
    for p in range(prompts):
        seq = ids[p:p + 1]
        stepper.reset(1)
        rows.append(stepper.logits(seq[:, :prompt_tokens], mask[:, :prompt_tokens], positions[:, :prompt_tokens]))
        for t in range(prompt_tokens, total):
            rows.append(stepper.logits(seq[:, t:t + 1], mask[:, :t + 1], np.ascontiguousarray(positions[:, t:t + 1])))
    return np.concatenate([np.asarray(r, dtype=np.float32).reshape(1, -1) for r in rows])


def kl_from_reference(ref_logits: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Mean KL(reference || row) of the next-token distributions (nats), and the top-1 agreement."""
    if ref_logits.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits against {ref_logits.shape[0]} reference rows")
    vocab = min(ref_logits.shape[1], logits.shape[1])   # a GGUF may pad its vocabulary
    ref, row = ref_logits[:, :vocab].astype(np.float64), logits[:, :vocab].astype(np.float64)

    def log_softmax(x):
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(row)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=1)
    return {"kl": float(kl.mean()), "kl_max": float(kl.max()),
            "top1": float((ref.argmax(axis=1) == row.argmax(axis=1)).mean()), "positions": int(kl.size)}


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---------------------------------------------------------------- benchmark workers
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
    from pathlib import Path

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
