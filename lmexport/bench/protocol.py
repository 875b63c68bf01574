"""The measurement protocol shared by every benchmark row: stdlib and numpy only.

A row is an engine (``lmexport.engine``; or a benchmark worker's stand-in of the same shape):
``reset(batch)`` clears its state and ``step(ids, mask, positions)`` runs one call (prefill or
decode) and returns the logits; the next token is the greedy one (``greedy``: on the engine's
device where it offers ``greedy_step``). ``measure`` drives every row the same way:

1. one warm-up pass (prefill, then ``min(new_tokens, WARMUP_DECODE_STEPS)`` decode
   steps), untimed;
2. ``repeats`` timed passes, each from empty state: a prefill of ``prompt_tokens``
   tokens (the prefill latency), then ``new_tokens`` decode calls of one token each,
   feeding back the state (never recomputing the prefix) and the greedy token.

Decode tokens/s counts tokens generated across the batch per second of decode
calls; each statistic is given as median, min and max over the repeats.

This module is imported by the optimum-onnx and llama.cpp workers of
``benchmarks/run.py`` (``benchmarks/worker_cli.py``) from their own virtual environments, so it
must keep to the standard library and numpy (``lmexport/bench/__init__.py`` imports nothing else;
memory readings are ``memory.py``).
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from lmexport.bench.memory import huge_mapped_mb, peak_rss_mb, reset_peak_rss, rss_mb

WARMUP_DECODE_STEPS = 4
FIRST_PROMPT_ID = 4  # skip <unk>, <s>, </s>, <pad> when drawing prompt ids


class Stepper(Protocol):
    """The part of ``lmexport.engine.Engine`` a benchmark row needs."""
    def reset(self, batch: int) -> None: ...

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Logits [batch, T, vocab] (or [batch, vocab] of the last position)."""


def last_logits(logits) -> np.ndarray:
    """The last position's logits [batch, vocab] of a ``step`` result, float32 on the host."""
    logits = np.asarray(logits)
    return (logits[:, -1] if logits.ndim == 3 else logits).astype(np.float32, copy=False)


def greedy(stepper: Stepper, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """One call; the greedy next token of each sequence [batch]. An engine that offers ``greedy_step``
    (the PyTorch engine: the argmax stays on its device) answers it itself."""
    own = getattr(stepper, "greedy_step", None)
    if own is not None:
        return own(ids, mask, positions)
    return last_logits(stepper.step(ids, mask, positions)).argmax(axis=-1)


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
    token = greedy(stepper, ids, mask[:, :prompt], np.ascontiguousarray(positions[:, :prompt]))
    sync()
    prefill = time.perf_counter() - t0
    steps = []
    for i in range(new_tokens):
        t = prompt + i
        t0 = time.perf_counter()
        token = greedy(stepper, np.asarray(token, dtype=np.int64).reshape(batch, 1), mask[:, :t + 1],
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


def quality_logits(stepper: Stepper, vocab_size: int, *, prompts: int = QUALITY_PROMPTS,
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
        rows.append(last_logits(stepper.step(seq[:, :prompt_tokens], mask[:, :prompt_tokens],
                                             positions[:, :prompt_tokens])))
        for t in range(prompt_tokens, total):
            rows.append(last_logits(stepper.step(seq[:, t:t + 1], mask[:, :t + 1],
                                                 np.ascontiguousarray(positions[:, t:t + 1]))))
    return np.concatenate([np.asarray(r, dtype=np.float32).reshape(1, -1) for r in rows])


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
