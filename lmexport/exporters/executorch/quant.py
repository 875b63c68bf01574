"""Quantisation of the ExecuTorch program: 8da4w linears with block offsets, int8 embedding rows.

8da4w is what XNNPACK runs fast on phones: int4 weights in groups of 32 with one scale per group
(zero point fixed at 0, codes -8..7; XNNPACK stores the scales as bf16), activations quantized to
int8 per token at run time (torchao's ``IntxUnpackedToInt8Tensor``, which the XNNPACK partitioner
lowers to its dynamically quantized fully-connected kernel).

torchao chooses each group's scale from max|w| (symmetric, round to nearest). On a real checkpoint
that loses a lot: SmolLM2-135M, whose weights sit on a q4_1 grid (``w = d*q + m`` per block), goes
from perplexity 34.40 to 52.2 with symmetric int4 weights alone (issue 28). lmexport quantizes each
linear itself instead, as the ONNX int4 export does (``exporters/onnx/blockquant.py``, a searched
scale and a real offset per block), and splits every block as ``w = s * c + o``:

* ``s * c`` (c in -8..7) is the 8da4w weight torchao and XNNPACK run, with lmexport's codes and
  scales (rounded to bf16 before the offsets are fitted, since XNNPACK will round them);
* ``o`` is one fp32 offset per block, applied as ``blocksums(x) @ O``: each block's input sum
  (computed as the block mean, XNNPACK's average pooling, times 32 folded into ``O``) times an
  [N, K/32] fp32 matrix, 1/32 of the linear's work, in fp32 without activation quantization.

Measured in eager PyTorch on SmolLM2 (held-out text, window 256): symmetric 8da4w 52.98, searched
blocks with offsets and int8 activations 36.63, fp32 34.40 (int8 activations alone: 35.30).

A linear whose input is narrower than a group (the SE block's fc2 at H/r) stays fp32. The
embedding table is stored as int8 rows with one fp32 scale per row (symmetric) and looked up with
two ``aten.embedding`` gathers and a multiply: ops every ExecuTorch runtime has. torchao's
``IntxWeightOnlyConfig`` on the embedding lowers to ``quantized_decomposed::embedding_byte``, a
kernel that the ``executorch.runtime`` Python wheel does not register (checked with executorch
1.5.1), so it could not be verified here. A tied lm_head is untied first: it is quantized as a
linear, the embedding as rows.

The output head is int8 per output row by default (``head_bits`` 8: 8da8w, XNNPACK's dynamically
quantized kernel with per-channel int8 weights), as llama.cpp's Q4_K_M keeps its output matrix at
6 bits: on SmolLM2 (eager PyTorch, two windows of 256) an 8da4w head alone brings the mean KL from
fp32 to 0.072 and top-1 to 0.80, an int8 head 0.019 and 0.90, for 1/4 more bytes in the file.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

EMBEDDING_BITS = (8, 32)      # 32: keep the table fp32
HEAD_BITS = (8, 4)            # lm_head: 8da8w per output row (the default) or 8da4w as every other linear
CODE_MIN, CODE_MAX = -8, 7    # int4 codes of the 8da4w weight (zero point 0)


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes per row (-127..127) and the row's fp32 scale [rows, 1]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale


class Int8Embedding(nn.Module):
    """Rows of int8 with a per-row fp32 scale: ``table[ids] * scale[ids]``."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        codes, scale = int8_rows(weight)
        self.register_buffer("qweight", codes)                            # (V, H) int8
        self.register_buffer("scale", scale)                              # (V, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.embedding(ids, self.qweight).float()        # (B, T, H)
        return rows * nn.functional.embedding(ids, self.scale)           # (B, T, 1) broadcast


class OffsetLinear(nn.Module):
    """``core(x) + blockmeans(x) @ (group * offsets).T``: an 8da4w linear plus one fp32 offset per weight
    block. The block means are ``x`` viewed as [rows, K/group, group, 1] averaged over its last two
    axes, which XNNPACK runs as global average pooling, so the whole linear stays in one delegated
    subgraph (a ``sum`` over the last axis does not lower and cut every linear out of it). Mean
    times ``group * offsets`` equals sum times offsets exactly: the group is a power of two."""

    def __init__(self, core: nn.Linear, offsets: torch.Tensor, group: int):
        super().__init__()
        self.core = core
        self.group = group
        self.scaled_offsets = nn.Parameter(offsets * group, requires_grad=False)   # [N, K/group] fp32

    @property
    def weight(self) -> torch.Tensor:
        """The core's (quantized) weight: its dtype is the linear's, as the model reads it."""
        return self.core.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nb = x.shape[-1] // self.group
        # views by -1 (a view whose size is a symbol, as reshape writes it, does not lower to XNNPACK)
        blocks = x.contiguous().view(-1, nb, self.group, 1)                           # [rows, K/g, g, 1]
        means = blocks.mean(dim=(2, 3), keepdim=True).view(x.shape[0], -1, nb)       # [B, T, K/g]
        return self.core(x) + nn.functional.linear(means, self.scaled_offsets)


def untie(model) -> None:
    """Give lm_head its own copy of a tied embedding matrix (they are quantized differently)."""
    if model.lm_head.weight is model.model.embed_tokens.weight:
        model.lm_head.weight = nn.Parameter(model.model.embed_tokens.weight.detach().clone(), requires_grad=False)


def bf16_exact(x: np.ndarray) -> np.ndarray:
    """fp32 values rounded to bf16 (as XNNPACK stores group scales), kept as fp32."""
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16).float().numpy()


def split_blocks(w: np.ndarray, group: int, search: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """w [N, K] -> (codes int8 [N, K] in -8..7, scales [N, K/group] bf16-exact fp32, offsets [N, K/group]
    fp32) with ``w ~ scales * codes + offsets`` per block. The codes come from the searched block
    quantisation with a float zero point (blockquant.quantize_blocks, importance-weighted); the scale
    is refitted and rounded to bf16 first, then the offset is the weighted mean the codes leave."""
    from lmexport.exporters.onnx.blockquant import importance, quantize_blocks

    n, k = w.shape
    nb = k // group
    q = quantize_blocks(w, 4, group, "float", search=search)
    c = q.q.astype(np.float32) + CODE_MIN                                  # [N, nb, g], q in 0..15
    x = w.astype(np.float32).reshape(n, nb, group)
    imp = importance(w).astype(np.float32).reshape(n, nb, group) + np.float32(1e-30)   # an all-zero row weighs > 0
    o = q.scales * (-CODE_MIN - q.zeros)                                   # w = (q - z) s = c s + (8 - z) s
    sw = imp.sum(-1)
    den = (imp * c * c).sum(-1) - (imp * c).sum(-1) ** 2 / sw
    s = np.where(den > 0, ((imp * (x - (imp * x).sum(-1, keepdims=True) / sw[..., None]) * c).sum(-1))
                 / np.where(den > 0, den, 1), q.scales)                    # weighted LS slope
    s = bf16_exact(np.where(s > 0, s, q.scales))
    o = (imp * (x - s[..., None] * c)).sum(-1) / sw
    flat = x.max(-1) <= x.min(-1)          # a constant block (a zero gate): all offset, codes 0, so the
    c[flat] = 0.0                          # int8 activation rounding adds nothing to it
    o[flat] = x[flat][:, 0]
    return c.reshape(n, k).astype(np.int8), s, o.astype(np.float32)


def torchao_linear(linear: nn.Linear, codes: torch.Tensor, scales: torch.Tensor, bits: int,
                   group: int) -> nn.Linear:
    """A linear whose weight is torchao's ``IntxUnpackedToInt8Tensor`` (int``bits`` codes, a scale per
    ``group`` inputs of a row, zero point 0, int8 activations per token): what the XNNPACK partitioner
    lowers to its dynamically quantized fully-connected kernel. The bias stays fp32."""
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor, IntxUnpackedToInt8TensorActivationQuantization)

    weight = IntxUnpackedToInt8Tensor(
        qdata=codes, scale=scales, zero_point=torch.zeros(scales.shape, dtype=torch.int8),
        target_dtype={4: torch.int4, 8: torch.int8}[bits], block_size=(1, group), dtype=torch.float32,
        activation_quantization=IntxUnpackedToInt8TensorActivationQuantization.INT8_ASYM_PER_TOKEN)
    core = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    core.weight = nn.Parameter(weight, requires_grad=False)
    if linear.bias is not None:
        core.bias = nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
    return core


def offset_linear(linear: nn.Linear, group: int, search: bool = True) -> OffsetLinear:
    """``linear`` as an 8da4w core (torchao's tensor, lmexport's codes and scales) plus block offsets."""
    codes, scales, offsets = split_blocks(linear.weight.detach().float().numpy(), group, search)
    core = torchao_linear(linear, torch.from_numpy(codes), torch.from_numpy(scales), 4, group)
    return OffsetLinear(core, torch.from_numpy(offsets), group)


def int8_linear(linear: nn.Linear) -> nn.Linear:
    """``linear`` as 8da8w: int8 weights with one symmetric scale per output row (XNNPACK's
    qd8-f32-qc8w kernel)."""
    codes, scale = int8_rows(linear.weight)
    return torchao_linear(linear, codes, scale, 8, linear.in_features)


def quantize_8da4w(model, group_size: int = 32, embedding_bits: int = 8, head_bits: int = 8,
                   progress=None) -> list[str]:
    """Quantize ``model`` (a LiquidMetalForCausalLM) in place; returns the linears left in fp32.
    ``progress(done, total)`` is called after each linear."""
    untie(model)
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if head_bits == 8:
        model.lm_head = int8_linear(model.lm_head)
        linears = [(name, m) for name, m in linears if name != "lm_head"]
    skipped = [name for name, m in linears if m.in_features % group_size != 0]
    todo = [(name, m) for name, m in linears if m.in_features % group_size == 0]
    for i, (name, linear) in enumerate(todo):
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, offset_linear(linear, group_size))
        if progress is not None:
            progress(i + 1, len(todo))
    if embedding_bits == 8:
        model.model.embed_tokens = Int8Embedding(model.model.embed_tokens.weight)
    return skipped
