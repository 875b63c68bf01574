"""The two sides of a parity run, behind one small interface (numpy in, numpy out).

A backend keeps its own state between calls: ``reset(batch)`` clears it,
``step(ids, mask, positions)`` runs one call (prefill or decode) and returns
logits [B, T, V] as float32, ``intermediates(...)`` runs a fresh prefill and
returns every layer module's output, "layers.N.<module>" -> [B, T, H].
"""
from __future__ import annotations

import numpy as np
import torch

from lmexport.modeling.model import LiquidMetalForCausalLM


class TorchBackend:
    """The PyTorch reference (or a model rebuilt from a GGUF file), with its state."""

    def __init__(self, model: LiquidMetalForCausalLM, name: str = "pytorch"):
        self.model = model.eval()
        self.name = name
        self._state = None

    def reset(self, batch: int) -> None:
        self._state = None

    @torch.no_grad()
    def step(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
        kv, conv, ctx = self._state if self._state else (None, None, None)
        out = self.model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(pos),
                         past_key_values=kv, past_conv=conv, past_context=ctx)
        self._state = (out.present_key_values, out.present_conv, out.present_context)
        return out.logits.float().numpy()

    @torch.no_grad()
    def intermediates(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
        out = self.model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(pos),
                         return_intermediates=True)
        return {k: v.float().numpy() for k, v in out.intermediates.items()}
