"""Always-on validation of an exported ONNX folder against the PyTorch reference.

The folder is loaded the way a user loads it (ONNX Runtime, CPU, names from
lmexport.json) and run on a left-padded batch of 2: a prefill, then
``decode_steps`` single-token steps, each fed the state the previous call returned
and the reference's greedy token. Every call compares the logits of the valid
positions and every present state (keys/values at valid positions) with PyTorch.
All differences are collected; the report lists each output's worst case and every
bound it exceeds (lmexport.tolerances).

The folder runs through the runtime's own ``Session`` (lmexport.runtime.session),
and the logits are compared with the same metrics as ``lmexport parity``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmexport.parity.metrics import StepMetrics, compare_logits, overall
from lmexport.manifest import IOSpec
from lmexport.runtime.batch import left_pad, positions_from_mask
from lmexport.runtime.ort import Session
from lmexport.parity.tolerances import Tolerance, bound_text, check, exceeds, get_tolerance

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
    import torch

    config = model.config
    runner = Session(folder, low_memory=True)
    tol = get_tolerance(variant)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    ids, mask = validation_batch(config.vocab_size, pad, lengths, seed)
    report = ValidationReport(variant, tol, decode_steps + 1)
    state = runner.zero_state(ids.shape[0])
    ref_state: dict = {}
    tokens = ids
    for call in range(decode_steps + 1):
        pos = positions_from_mask(mask, tokens.shape[1])
        with torch.no_grad():
            ref = model(torch.from_numpy(tokens), torch.from_numpy(mask), torch.from_numpy(pos), **ref_state)
        out = runner.run(tokens, mask, pos, state)
        valid = mask[:, mask.shape[1] - tokens.shape[1]:].astype(bool)
        ref_logits = ref.logits.float().numpy()
        report.add_logits(ref_logits[valid], out[runner.logits_name][valid])
        for spec, value in _reference_presents(ref, runner.manifest.outputs):
            keep = mask[:, None, :, None] if spec.role in ("key", "value") else None   # padded KV rows are junk
            report.states.setdefault(spec.name, StateStats()).add(value, out[spec.name], keep)
        state = runner.next_state(out)
        ref_state = {"past_key_values": ref.present_key_values, "past_conv": ref.present_conv,
                     "past_context": ref.present_context}
        tokens = ref_logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=np.int64)], axis=1)
    report.finish()
    log.debug("%s", report.table())
    return report


def _reference_presents(out, outputs: list[IOSpec]) -> list[tuple[IOSpec, np.ndarray]]:
    """The PyTorch model's present state, paired with the graph output of each role and layer."""
    by_role = {"key": lambda i: out.present_key_values[i][0], "value": lambda i: out.present_key_values[i][1],
               "conv": lambda i: out.present_conv[i], "context": lambda i: out.present_context[i]}
    return [(spec, by_role[spec.role](spec.layer).float().numpy()) for spec in outputs if spec.is_state]
