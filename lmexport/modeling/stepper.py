"""The PyTorch model driven call by call with its explicit state, as an exported graph is.

Each call feeds the previous call's key/value, convolution and context state back in,
so no prefix is recomputed. Parity, the benchmark and the validators' references use
this one stepper; ``lmexport.runtime.ort.Stepper`` is its ONNX Runtime twin.
"""
from __future__ import annotations

import numpy as np
import torch

from lmexport.modeling.model import LiquidMetalForCausalLM


class TorchStepper:
    def __init__(self, model: LiquidMetalForCausalLM, device: torch.device | str = "cpu"):
        self.model = model.eval()
        self.device = torch.device(device)
        self._state = None

    def reset(self, batch: int) -> None:
        self._state = None

    @torch.inference_mode()
    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> torch.Tensor:
        """One call (prefill or decode); logits [B, T, V] on the model's device."""
        kv, conv, ctx = self._state if self._state else (None, None, None)
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        out = self.model(to(ids), to(mask), to(positions), past_key_values=kv, past_conv=conv, past_context=ctx)
        self._state = (out.present_key_values, out.present_conv, out.present_context)
        return out.logits
