"""Shared pieces of the GGUF tests: logit comparison against the tolerance presets."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch


def logits_of(model, seq_len: int = 16, batch: int = 2, seed: int = 1) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, model.config.vocab_size, (batch, seq_len), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0                                   # a left-padded row
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(ids, mask, pos).logits.float().numpy()
    return logits[mask.numpy().astype(bool)]          # valid positions only, [N, V]


def logit_metrics(ref: np.ndarray, art: np.ndarray) -> SimpleNamespace:
    ref, art = ref.astype(np.float64), art.astype(np.float64)
    lp = ref - ref.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = art - art.max(-1, keepdims=True)
    lq = lq - np.log(np.exp(lq).sum(-1, keepdims=True))
    cos = (ref * art).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(art, axis=-1))
    return SimpleNamespace(max_abs=float(np.abs(ref - art).max()), top1=float((ref.argmax(-1) == art.argmax(-1)).mean()),
                           kl_mean=float((np.exp(lp) * (lp - lq)).sum(-1).mean()), cosine_min=float(cos.min()))
