"""Choosing the next token: greedy, or sampling with temperature, top-k and top-p.

Reproducible: each row of a batch draws from its own ``numpy.random.Generator``,
seeded once per generation, so a seed gives the same sample every time and a
prompt in a batch gets the sample it would get alone. The repetition penalty (CTRL / Hugging Face convention) divides
positive logits of already-seen tokens by the penalty and multiplies negative ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lmexport.errors import GenerationError


MAX_SEED = 2**64 - 1


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0        # 0: greedy
    top_k: int = 0                  # 0: off
    top_p: float = 1.0              # 1: off
    repetition_penalty: float = 1.0  # 1: off
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        for name, value in (("temperature", self.temperature), ("top-p", self.top_p),
                            ("repetition penalty", self.repetition_penalty)):
            if not _is_number(value) or not math.isfinite(value):
                problems.append(f"{name} must be a finite number, got {value!r}")
        if not problems:
            if self.temperature < 0:
                problems.append(f"temperature must be >= 0, got {self.temperature}")
            if not 0 < self.top_p <= 1:
                problems.append(f"top-p must be in (0, 1], got {self.top_p}")
            if self.repetition_penalty <= 0:
                problems.append(f"repetition penalty must be > 0, got {self.repetition_penalty}")
        if not _is_int(self.top_k) or self.top_k < 0:
            problems.append(f"top-k must be >= 0, got {self.top_k!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            problems.append(f"seed must be an integer in 0..{MAX_SEED}, got {self.seed!r}")
        if problems:
            raise GenerationError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: np.ndarray, seen: list[set[int]], penalty: float) -> np.ndarray:
    if penalty == 1.0:
        return logits
    logits = logits.copy()
    for row, tokens in enumerate(seen):
        if tokens:
            idx = np.fromiter(tokens, dtype=np.int64)
            vals = logits[row, idx]
            logits[row, idx] = np.where(vals > 0, vals / penalty, vals * penalty)
    return logits


def filter_top_k_top_p(probs: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Zero out what top-k and top-p exclude, renormalise; probs [V]."""
    order = np.argsort(-probs, kind="stable")
    keep = np.ones_like(order, dtype=bool)
    if top_k:
        keep[top_k:] = False
    if top_p < 1.0:
        cumulative = np.cumsum(probs[order])
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        keep &= np.concatenate([[True], cumulative[:-1] < top_p])
    out = np.zeros_like(probs)
    out[order[keep]] = probs[order[keep]]
    return out / out.sum()


def choose(logits: np.ndarray, params: SamplingParams, rngs: Sequence[np.random.Generator],
           seen: list[set[int]]) -> np.ndarray:
    """Next token per row; logits [B, V] -> [B] int64; ``rngs`` and ``seen`` (token ids so far) per row."""
    logits = apply_repetition_penalty(logits.astype(np.float64), seen, params.repetition_penalty)
    if params.greedy:
        return logits.argmax(-1).astype(np.int64)
    scaled = logits / params.temperature
    scaled -= scaled.max(-1, keepdims=True)
    probs = np.exp(scaled)
    probs /= probs.sum(-1, keepdims=True)
    out = np.empty(logits.shape[0], dtype=np.int64)
    for row in range(logits.shape[0]):
        p = filter_top_k_top_p(probs[row], params.top_k, params.top_p)
        out[row] = rngs[row].choice(p.shape[0], p=p)
    return out
