"""Shared pieces of the GGUF tests: logit comparison against the tolerance presets."""
from __future__ import annotations

import numpy as np
import torch

from lmexport.compare.metrics import compare_logits


def logits_of(model, seq_len: int = 16, batch: int = 2, seed: int = 1) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, model.config.vocab_size, (batch, seq_len), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0                                   # a left-padded row
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(ids, mask, pos).logits.float().numpy()
    return logits[mask.numpy().astype(bool)]          # valid positions only, [N, V]


def logit_metrics(ref: np.ndarray, art: np.ndarray):
    """The metrics the tolerance presets read, computed as ``lmexport parity`` does."""
    return compare_logits(ref, art)
