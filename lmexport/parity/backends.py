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
from lmexport.modeling.stepper import TorchStepper


class TorchBackend:
    """The PyTorch reference (or a model rebuilt from a GGUF file), with its state."""

    def __init__(self, model: LiquidMetalForCausalLM, name: str = "pytorch"):
        self.model = model.eval()
        self.name = name
        self.stepper = TorchStepper(self.model)

    def reset(self, batch: int) -> None:
        self.stepper.reset(batch)

    def step(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return self.stepper.step(ids, mask, pos).float().numpy()

    @torch.no_grad()
    def intermediates(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
        out = self.model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(pos),
                         return_intermediates=True)
        return {k: v.float().numpy() for k, v in out.intermediates.items()}
