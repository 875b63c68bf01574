"""Numbers that say how far an artifact's logits are from a reference's (numpy only).

The one home of log-softmax, KL and the logit metrics: shared by the export validators,
``lmexport parity``, ``bench``'s quality column and ``perplexity`` (``nll_sum``). Each comparison takes
reference and artifact logits for the same positions, [N, V] (N = valid positions
of one call, batch rows flattened). NaN/inf in the artifact's logits are counted
(``nonfinite``) and always fail a tolerance check; the other numbers are computed
with them set to 0.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np



def log_softmax(x: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in float64."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(ref: np.ndarray, art: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(art)) per row, in nats; logits [..., V] -> [...]."""
    lp, lq = log_softmax(ref), log_softmax(art)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def nll_sum(logits: np.ndarray, targets) -> float:
    """Sum of -log softmax(logits)[target] over rows (nats); logits [n, V], targets [n]."""
    logp = log_softmax(logits)
    return float(-logp[np.arange(len(targets)), np.asarray(targets)].sum())


def distribution_agreement(ref_logits: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Mean and max KL(reference || row) of the next-token distributions (nats) and the top-1 agreement;
    the shorter vocabulary wins (a GGUF may pad its vocabulary)."""
    if ref_logits.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits against {ref_logits.shape[0]} reference rows")
    vocab = min(ref_logits.shape[1], logits.shape[1])
    ref, row = ref_logits[:, :vocab].astype(np.float64), logits[:, :vocab].astype(np.float64)
    kl = kl_divergence(ref, row)
    return {"kl": float(kl.mean()), "kl_max": float(kl.max()),
            "top1": float((ref.argmax(axis=1) == row.argmax(axis=1)).mean()), "positions": int(kl.size)}


@dataclass(frozen=True)
class StepMetrics:
    max_abs: float      # largest |ref - art|
    mean_abs: float     # mean |ref - art|
    rel: float          # max_abs / largest |ref|
    cosine_min: float   # smallest cosine similarity of a row pair
    top1: float         # fraction of rows whose argmax agrees
    kl_mean: float      # mean KL(ref || art) of the next-token distributions, nats
    kl_max: float
    positions: int
    ref_max: float = 0.0  # largest |ref|: the scale of the relative bounds
    nonfinite: int = 0  # NaN/inf values in the artifact's logits

    def to_json(self) -> dict:
        return asdict(self)


def compare_logits(ref: np.ndarray, art: np.ndarray) -> StepMetrics:
    nonfinite = int((~np.isfinite(art)).sum())
    art = np.nan_to_num(np.asarray(art, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    ref = np.asarray(ref, dtype=np.float64).reshape(-1, ref.shape[-1])
    art = art.reshape(-1, art.shape[-1])
    if ref.shape != art.shape:
        raise ValueError(f"logit shapes differ: {ref.shape} vs {art.shape}")
    diff = np.abs(ref - art)
    norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(art, axis=-1)
    cosine = (ref * art).sum(-1) / np.maximum(norms, 1e-30)
    kl = kl_divergence(ref, art)
    return StepMetrics(
        max_abs=float(diff.max()), mean_abs=float(diff.mean()),
        rel=float(diff.max() / max(np.abs(ref).max(), 1e-30)),
        cosine_min=float(cosine.min()), top1=float((ref.argmax(-1) == art.argmax(-1)).mean()),
        kl_mean=float(kl.mean()), kl_max=float(max(kl.max(), 0.0)), positions=int(ref.shape[0]),
        ref_max=float(np.abs(ref).max()), nonfinite=nonfinite)


def overall(steps: list[StepMetrics]) -> StepMetrics:
    """Worst case over steps for the bounds, position-weighted means for the averages."""
    n = sum(s.positions for s in steps)
    return StepMetrics(
        max_abs=max(s.max_abs for s in steps),
        mean_abs=sum(s.mean_abs * s.positions for s in steps) / n,
        rel=max(s.rel for s in steps),
        cosine_min=min(s.cosine_min for s in steps),
        top1=sum(s.top1 * s.positions for s in steps) / n,
        kl_mean=sum(s.kl_mean * s.positions for s in steps) / n,
        kl_max=max(s.kl_max for s in steps), positions=n, ref_max=max(s.ref_max for s in steps),
        nonfinite=sum(s.nonfinite for s in steps))


def greedy_agreement_length(ref_tokens: np.ndarray, art_tokens: np.ndarray) -> np.ndarray:
    """Per row: how many greedy tokens agree before the first difference. [B, S] -> [B]."""
    same = np.asarray(ref_tokens) == np.asarray(art_tokens)
    first_diff = np.where(same.all(axis=1), same.shape[1], np.argmin(same, axis=1))
    return first_diff.astype(int)


def relative_difference(ref: np.ndarray, art: np.ndarray) -> float:
    """max |ref - art| / max |ref|: the localisation yardstick for hidden states."""
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(ref - np.asarray(art, dtype=np.float64)).max() / max(np.abs(ref).max(), 1e-30))
