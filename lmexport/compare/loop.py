"""The compare loop: two engines (``lmexport.engine``) on the same left-padded batch, call by call.

A prefill, then ``steps`` decode steps in which both sides are fed the reference's greedy token (so
their states stay comparable), comparing the logits of every valid position of every call. Used by
the exporters' validation (which also compares the carried state, through ``on_call``) and by
``lmexport parity``; ``localise`` names the first layer module whose output diverges.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from lmexport.compare.metrics import StepMetrics, compare_logits, greedy_agreement_length, relative_difference
from lmexport.runtime.batch import positions_from_mask


@dataclass
class Divergence:
    where: str                 # "layer 3 se"
    layer: int | None
    module: str
    relative_difference: float
    threshold: float

    def to_json(self) -> dict:
        return dict(self.__dict__)


def compare_calls(ref, art, ids: np.ndarray, mask: np.ndarray, steps: int,
                  on_call: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None
                  ) -> tuple[list[StepMetrics], np.ndarray]:
    """Prefill ``ids`` (``mask``: 1 on real tokens) on both engines, then ``steps`` decode steps fed the
    reference's greedy token. Returns (one StepMetrics per call, greedy agreement length per row).

    ``on_call(call, mask, ref_logits, art_logits)`` runs after each call (``mask`` covers the past and
    this call)."""
    ref.reset(ids.shape[0])
    art.reset(ids.shape[0])
    tokens, metrics, ref_tokens, art_tokens = ids, [], [], []
    for call in range(steps + 1):
        pos = positions_from_mask(mask, tokens.shape[1])
        ref_logits, art_logits = ref.step(tokens, mask, pos), art.step(tokens, mask, pos)
        valid = mask[:, mask.shape[1] - tokens.shape[1]:].astype(bool)
        metrics.append(compare_logits(ref_logits[valid], art_logits[valid]))
        if on_call:
            on_call(call, mask, ref_logits, art_logits)
        if call == steps:
            break
        nxt = ref_logits[:, -1].argmax(-1)
        ref_tokens.append(nxt)
        art_tokens.append(art_logits[:, -1].argmax(-1))
        tokens = nxt[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=np.int64)], axis=1)
    if not steps:
        return metrics, np.zeros(ids.shape[0], dtype=int)
    return metrics, greedy_agreement_length(np.stack(ref_tokens, 1), np.stack(art_tokens, 1))


def localise(ref, art, ids: np.ndarray, mask: np.ndarray, threshold: float,
             num_layers: int) -> tuple[Divergence | None, list[dict]]:
    """Compare every layer module's output on one prefill; name the first beyond ``threshold``.

    The modules are the reference's ``intermediates`` ("layers.N.<module>", in the order it computes
    them: ``modeling.model.LAYER_MODULES``); those the artifact lacks are skipped."""
    pos = positions_from_mask(mask, ids.shape[1])
    want, got = ref.intermediates(ids, mask, pos), art.intermediates(ids, mask, pos)
    valid = mask.astype(bool)
    table, first = [], None
    for layer in range(num_layers):
        row = {"layer": layer}
        prefix = f"layers.{layer}."
        for key in want:
            if not key.startswith(prefix) or key not in got:
                continue
            module = key[len(prefix):]
            rel = relative_difference(want[key][valid], got[key][valid])
            row[module] = rel
            if first is None and rel > threshold:
                first = Divergence(f"layer {layer} {module}", layer, module, rel, threshold)
        table.append(row)
    return first, table
