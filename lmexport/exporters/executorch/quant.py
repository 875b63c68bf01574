"""Quantisation of the ExecuTorch program: 8da4w linears (torchao), int8 embedding rows.

* Every ``nn.Linear`` whose input width is a multiple of the group size gets torchao's
  ``Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, PerGroup(group))``: int4
  weights with one scale per group, activations quantized to int8 per token at run time. The
  XNNPACK partitioner lowers these to its dynamically quantized fully-connected kernels. A
  linear whose input is narrower than a group (the SE block's fc2 at H/r) stays fp32.
* The embedding table is stored as int8 rows with one fp32 scale per row (symmetric) and
  looked up with two ``aten.embedding`` gathers and a multiply: ops every ExecuTorch runtime
  has. torchao's ``IntxWeightOnlyConfig`` on the embedding lowers to
  ``quantized_decomposed::embedding_byte``, a kernel that the ``executorch.runtime`` Python
  wheel does not register (checked with executorch 1.5.1), so it could not be verified here.

A tied lm_head is untied first: it is quantized as a linear, the embedding as rows.
"""
from __future__ import annotations

import torch
from torch import nn

EMBEDDING_BITS = (8, 32)      # 32: keep the table fp32


class Int8Embedding(nn.Module):
    """Rows of int8 with a per-row fp32 scale: ``table[ids] * scale[ids]``."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.detach().float()                                       # (V, H)
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0  # (V, 1)
        self.register_buffer("qweight", torch.round(w / scale).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.embedding(ids, self.qweight).float()        # (B, T, H)
        return rows * nn.functional.embedding(ids, self.scale)           # (B, T, 1) broadcast


def untie(model) -> None:
    """Give lm_head its own copy of a tied embedding matrix (they are quantized differently)."""
    if model.lm_head.weight is model.model.embed_tokens.weight:
        model.lm_head.weight = nn.Parameter(model.model.embed_tokens.weight.detach().clone(), requires_grad=False)


def quantize_8da4w(model, group_size: int = 32, embedding_bits: int = 8) -> list[str]:
    """Quantize ``model`` (a LiquidMetalForCausalLM) in place; returns the linears left in fp32."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    untie(model)
    skipped = [name for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and m.in_features % group_size != 0]
    quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                           weight_granularity=PerGroup(group_size)),
              filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and m.in_features % group_size == 0)
    if embedding_bits == 8:
        model.model.embed_tokens = Int8Embedding(model.model.embed_tokens.weight)
    return skipped
