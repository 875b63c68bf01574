"""Perplexity of a causal language model over a token stream, by (strided) windows.

The method, shared by every backend so that their numbers compare:

1. The token ids of a text are cut into windows of at most ``window`` tokens whose
   starts are ``stride`` apart (1 <= stride < window).
2. Each window is run from an empty state (no BOS is added). The first window scores
   its tokens 1..window-1; every later window scores only its last ``stride`` tokens,
   the ``window - stride`` tokens before them serve as context (the Hugging Face
   "strided perplexity" recipe). So every token but the first of the stream is scored
   (its negative log-likelihood given the tokens before it in its window) exactly once.
   The default ``stride = window - 1`` gives back-to-back windows that share one token:
   the cheapest layout, each target seeing 0..window-2 tokens of context ("non-overlapping").
   A smaller stride costs window/stride forward passes per token and gives every target
   at least ``window - stride`` tokens of context, hence a lower perplexity.
3. perplexity = exp(sum of NLL over scored tokens / number of scored tokens), NLL in nats.

The windowing and the aggregation here are torch-free (``windows``, ``perplexity``);
a ``WindowScorer`` takes one window's ids and the index of its first scored token and
returns the summed NLL of ids[first_target:] given their prefixes. ``engine_scorer`` is
the one scorer: any engine (``lmexport.engine``: ONNX Runtime, llama.cpp, PyTorch),
each window one prefill from an empty state, the NLL from ``lmexport.compare.metrics``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from lmexport.errors import InputError

# (window ids, index of the first scored token in the window) -> summed NLL in nats.
WindowScorer = Callable[[Sequence[int], int], float]


@dataclass(frozen=True)
class Window:
    """Tokens ``start:end`` of the stream; targets are window positions ``first_target:``."""
    start: int
    end: int
    first_target: int

    @property
    def n_targets(self) -> int:
        return self.end - self.start - self.first_target


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll_sum: float          # nats, over all scored tokens
    n_targets: int          # scored tokens (n_tokens - 1)
    n_tokens: int
    window: int
    stride: int

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.n_targets

    def to_dict(self) -> dict:
        return {"perplexity": self.perplexity, "mean_nll": self.mean_nll, "nll_sum": self.nll_sum,
                "n_targets": self.n_targets, "n_tokens": self.n_tokens, "window": self.window,
                "stride": self.stride}


def windows(n_tokens: int, window: int, stride: int | None = None) -> list[Window]:
    """The windows covering ``n_tokens`` ids; every id but the first is a target exactly once.

    ``stride`` defaults to ``window - 1`` (see the module docstring).
    """
    if window < 2:
        raise InputError(f"perplexity window must be at least 2 tokens, got {window}")
    stride = window - 1 if stride is None else stride
    if not 1 <= stride < window:
        raise InputError(f"perplexity stride must be in 1..{window - 1} (less than the window), got {stride}",
                         hint="a target needs at least one token of context in its window")
    if n_tokens < 2:
        raise InputError(f"perplexity needs at least 2 tokens, got {n_tokens}",
                         hint="give a longer text")
    out: list[Window] = []
    scored_to = 1                       # ids [1, scored_to) are already targets
    start = 0
    while scored_to < n_tokens:
        end = min(start + window, n_tokens)
        out.append(Window(start, end, scored_to - start))
        scored_to = end
        start += stride
        if end == n_tokens:
            break
    return out


def aggregate(nll_sum: float, n_targets: int) -> float:
    """exp(mean NLL): the perplexity of ``n_targets`` tokens whose NLLs (nats) sum to ``nll_sum``."""
    if n_targets <= 0:
        raise InputError("no tokens were scored")
    return math.exp(nll_sum / n_targets)


def perplexity(scorer: WindowScorer, token_ids: Sequence[int], window: int, stride: int | None = None,
               *, progress: bool = False, desc: str = "perplexity") -> PerplexityResult:
    """Run ``scorer`` over the windows of ``token_ids`` and aggregate (see the module docstring)."""
    ids = list(token_ids)
    spans = windows(len(ids), window, stride)
    if progress:
        from tqdm import tqdm
        spans_iter = tqdm(spans, desc=desc, unit="window")
    else:
        spans_iter = spans
    nll_sum, n_targets = 0.0, 0
    for w in spans_iter:
        nll = float(scorer(ids[w.start:w.end], w.first_target))
        if not math.isfinite(nll):
            from lmexport.errors import NonFiniteError
            raise NonFiniteError(f"the model scored the window at token {w.start} as {nll} (NaN or infinite "
                                 "logits): its graph or weights are broken",
                                 hint="run lmexport parity against its model folder")
        nll_sum += nll
        n_targets += w.n_targets
    return PerplexityResult(aggregate(nll_sum, n_targets), nll_sum, n_targets, len(ids), window,
                            window - 1 if stride is None else stride)


def engine_scorer(engine) -> WindowScorer:
    """A WindowScorer for any engine: each window is one prefill from an empty state."""
    import numpy as np

    from lmexport.compare.metrics import nll_sum

    def score(ids: Sequence[int], first_target: int) -> float:
        x = np.asarray([list(ids)], dtype=np.int64)                        # (1, T)
        engine.reset(1)
        logits = engine.step(x, np.ones_like(x), np.arange(x.shape[1], dtype=np.int64)[None])
        return nll_sum(logits[0, first_target - 1:-1], ids[first_target:])

    return score


def perplexity_torch(model, token_ids: Sequence[int], window: int = 256, stride: int | None = None,
                     *, progress: bool = False) -> float:
    """Perplexity of a PyTorch model on ``token_ids`` (windows of ``window``, starts ``stride`` apart)."""
    from lmexport.modeling.engine import TorchEngine

    was_training = model.training
    device = next(model.parameters()).device
    try:
        engine = TorchEngine(model=model, device=device.type)
        return perplexity(engine_scorer(engine), token_ids, window, stride, progress=progress,
                          desc="perplexity (torch)").perplexity
    finally:
        model.train(was_training)
