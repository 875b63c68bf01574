"""Always-on validation of an exported ONNX folder against the PyTorch reference.

The folder is loaded the way a user loads it (ONNX Runtime, CPU, names from
lmexport.json) and run on a left-padded batch of 2: a prefill, then
``decode_steps`` single-token steps, each fed the state the previous call returned
and the reference's greedy token. Every call compares the logits of the valid
positions and every present state (keys/values at valid positions) with PyTorch.
All differences are collected; the report lists each output's worst case and every
bound it exceeds (lmexport.tolerances).

The folder runs in the runtime's own engine (``lmexport.runtime.ort.OnnxEngine``) beside the
PyTorch engine (``lmexport.modeling.engine.TorchEngine``), through the comparison core's loop
(``lmexport.compare.loop``) that ``lmexport parity`` runs too.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmexport.compare.loop import compare_calls
from lmexport.compare.metrics import StepMetrics, compare_logits, overall
from lmexport.compare.tolerances import Tolerance, bound_text, check, exceeds, get_tolerance
from lmexport.manifest import IOSpec
from lmexport.manifest_schema import KV_ROLES
from lmexport.runtime.batch import left_pad

log = logging.getLogger(__name__)


@dataclass
class StateStats:
    max_abs: float = 0.0
    ref_max: float = 0.0
    nonfinite: int = 0

    @property
    def rel(self) -> float:
        return self.max_abs / max(self.ref_max, 1e-30)

    def add(self, ref: np.ndarray, art: np.ndarray, keep: np.ndarray | None = None) -> None:
        self.nonfinite += int((~np.isfinite(art)).sum())
        ref, art = ref.astype(np.float64), np.nan_to_num(art.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        diff = np.abs(ref - art)
        if keep is not None:
            diff, ref = diff * keep, ref * keep
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.ref_max = max(self.ref_max, float(np.abs(ref).max(initial=0.0)))


def state_failure(name: str, stats: StateStats, tol: Tolerance) -> str | None:
    """max |diff| <= atol + state_rtol * max |reference| of that state (state_rtol None: hidden_rel)."""
    if stats.nonfinite:
        return f"{name}: {stats.nonfinite} NaN/inf values"
    rtol = tol.state_rtol if tol.state_rtol is not None else tol.hidden_rel
    if exceeds(stats.max_abs, stats.ref_max, tol.atol, rtol):
        return f"{name}: max |diff| " + bound_text(stats.max_abs, stats.ref_max, tol.atol, rtol)
    return None


@dataclass
class ValidationReport:
    variant: str
    tolerance: Tolerance
    calls: int
    per_call: list[StepMetrics] = field(default_factory=list)
    states: dict[str, StateStats] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def logits(self) -> StepMetrics:
        return overall(self.per_call)

    def add_logits(self, ref: np.ndarray, art: np.ndarray) -> None:
        self.per_call.append(compare_logits(ref, art))

    def finish(self) -> None:
        self.failures = [f"logits: {f}" for f in check(self.logits, self.tolerance)]
        self.failures += [f for f in (state_failure(n, s, self.tolerance) for n, s in self.states.items()) if f]

    def table(self) -> str:
        """The summary: logits, then the worst state of each kind, then the verdict."""
        lg = self.logits
        rows = [f"validation ({self.variant}, ONNX Runtime CPU vs PyTorch fp32, batch 2 left-padded, "
                f"prefill + {self.calls - 1} decode steps)",
                f"  {'output':<28}{'max |diff|':>12}{'relative':>10}{'top-1':>8}{'KL mean':>10}{'KL max':>10}",
                f"  {'logits':<28}{lg.max_abs:>12.3g}{lg.rel:>10.2e}{lg.top1:>8.3f}{lg.kl_mean:>10.2e}"
                f"{lg.kl_max:>10.2e}"]
        by_kind: dict[str, tuple[str, StateStats]] = {}
        for name, s in self.states.items():
            kind = name.split(".")[0]
            if kind not in by_kind or s.rel > by_kind[kind][1].rel:
                by_kind[kind] = (name, s)
        for name, s in by_kind.values():
            rows.append(f"  {name + ' (worst)':<28}{s.max_abs:>12.3g}{s.rel:>10.2e}")
        rows.append(f"  {len(self.states)} state outputs compared; "
                    + ("PASSED" if self.passed else f"FAILED ({len(self.failures)} bounds exceeded)"))
        return "\n".join(rows)


# ---------------------------------------------------------------- the check

def validation_batch(vocab_size: int, pad_id: int, lengths: tuple[int, ...] = (11, 4), seed: int = 0):
    """A left-padded batch of random prompts: (input_ids, attention_mask), [B, max(lengths)]."""
    rng = np.random.default_rng(seed)
    return left_pad([rng.integers(0, vocab_size, n) for n in lengths], pad_id)


def validate_folder(folder: str | Path, model, variant: str, *, decode_steps: int = 8,
                    lengths: tuple[int, ...] = (11, 4), seed: int = 0) -> ValidationReport:
    """Compare the folder with ``model`` (PyTorch fp32) call by call; never raises on a bound."""
    from lmexport.modeling.engine import TorchEngine
    from lmexport.runtime.ort import OnnxEngine

    config = model.config
    art = OnnxEngine(folder, low_memory=True)
    ref = TorchEngine(folder, model=model)
    tol = get_tolerance(variant)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    ids, mask = validation_batch(config.vocab_size, pad, lengths, seed)
    report = ValidationReport(variant, tol, decode_steps + 1)

    past_of = {s.present: s.name for s in art.session.states}     # the engine keeps each present as its past

    def compare_states(call, mask, ref_logits, art_logits):
        for spec, value in _reference_presents(ref.state, art.manifest.outputs):
            keep = mask[:, None, :, None] if spec.role in KV_ROLES else None   # padded KV rows are junk
            report.states.setdefault(spec.name, StateStats()).add(value, _host(art.state[past_of[spec.name]]), keep)

    report.per_call, _ = compare_calls(ref, art, ids, mask, decode_steps, on_call=compare_states)
    report.finish()
    log.debug("%s", report.table())
    return report


def _host(value) -> np.ndarray:
    """A state value on the host (the engine keeps OrtValues)."""
    return value if isinstance(value, np.ndarray) else value.numpy()


def _reference_presents(state, outputs: list[IOSpec]) -> list[tuple[IOSpec, np.ndarray]]:
    """The PyTorch engine's present state (kv, conv, context), paired with the graph output of each role and layer."""
    kv, conv, context = state
    by_role = {"key": lambda i: kv[i][0], "value": lambda i: kv[i][1],
               "conv": lambda i: conv[i], "context": lambda i: context[i]}
    return [(spec, by_role[spec.role](spec.layer).float().numpy()) for spec in outputs if spec.is_state]
