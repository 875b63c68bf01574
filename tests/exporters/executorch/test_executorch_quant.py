"""The 8da4w recipe (lmexport/exporters/executorch/quant.py): searched int4 codes and scales plus one
offset per block, on matrices with a known structure.

Skipped without torchao (the ``[executorch]`` extra), unless LMEXPORT_REQUIRE_EXECUTORCH=1.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

try:
    import torchao  # noqa: F401
except ImportError:
    if os.environ.get("LMEXPORT_REQUIRE_EXECUTORCH") == "1":
        raise
    pytest.skip("torchao is not installed (pip install 'lmexport[executorch]')", allow_module_level=True)

from conftest import BUNDLED
from lmexport.modeling.checkpoint import load_model
from lmexport.exporters.executorch.quant import (CODE_MAX, CODE_MIN, OffsetLinear, int8_linear, offset_linear,
                                                 quantize_8da4w, split_blocks)

GROUP = 32


def q4_1_grid(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A matrix on llama.cpp's q4_1 grid: per block of 32, w = d * q + m, q in 0..15 (both ends used),
    d and m fp16 as q4_1 stores them, m far from zero (what a symmetric int4 cannot hold)."""
    rng = np.random.default_rng(seed)
    nb = cols // GROUP
    q = rng.integers(0, 16, (rows, nb, GROUP))
    q[..., 0], q[..., 1] = 0, 15
    d = rng.uniform(0.002, 0.02, (rows, nb, 1)).astype(np.float16).astype(np.float32)
    m = (-rng.uniform(0.0, 0.3, (rows, nb, 1))).astype(np.float16).astype(np.float32)
    return (d * q + m).reshape(rows, cols).astype(np.float32)


def dequantize(codes, scales, offsets):
    n, k = codes.shape
    return (codes.reshape(n, -1, GROUP) * scales[..., None] + offsets[..., None]).reshape(n, k)


def symmetric_error(w: np.ndarray) -> float:
    """torchao's default 8da4w weight: scale max|w| / 7.5 per group, codes rounded to -8..7."""
    x = w.reshape(w.shape[0], -1, GROUP)
    s = np.abs(x).max(-1, keepdims=True) / 7.5
    return float(np.linalg.norm((np.clip(np.rint(x / s), -8, 7) * s).reshape(w.shape) - w))


def test_a_q4_1_grid_is_held_up_to_the_bf16_scales():
    w = q4_1_grid(64, 256)
    codes, scales, offsets = split_blocks(w, GROUP)
    assert codes.dtype == np.int8 and codes.min() >= CODE_MIN and codes.max() <= CODE_MAX
    # the scales are what XNNPACK stores (bf16), bit for bit
    assert np.array_equal(torch.from_numpy(scales).to(torch.bfloat16).float().numpy(), scales)
    err = np.linalg.norm(dequantize(codes, scales, offsets) - w)
    assert err < 4e-3 * np.linalg.norm(w)                   # bf16 scale rounding is all that is left
    assert err < symmetric_error(w) / 20                    # torchao's own choice loses far more


def test_a_constant_block_is_all_offset():
    """A zero (or constant) block gets codes 0: the int8 activation rounding then adds nothing to it."""
    w = q4_1_grid(8, 128)
    w[:, :GROUP] = 0.0
    w[3, GROUP:2 * GROUP] = 0.25
    codes, scales, offsets = split_blocks(w, GROUP)
    assert not codes[:, :GROUP].any() and not codes[3, GROUP:2 * GROUP].any()
    assert np.array_equal(offsets[:, 0], np.zeros(8, np.float32)) and offsets[3, 1] == np.float32(0.25)


def test_offset_linear_computes_the_split_weight():
    """core (torchao's 8da4w tensor, int8 activations) + block sums @ offsets ~ x @ dequantized.T."""
    w = q4_1_grid(48, 192, seed=3)
    linear = torch.nn.Linear(192, 48, bias=True)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w))
    layer = offset_linear(linear, GROUP)
    codes, scales, offsets = split_blocks(w, GROUP)
    x = torch.randn(2, 5, 192)
    want = x @ torch.from_numpy(dequantize(codes, scales, offsets)).T + linear.bias
    with torch.no_grad():
        got = layer(x)
        plain = linear(x)
    assert torch.equal(layer.core.weight.qdata, torch.from_numpy(codes))   # lmexport's codes, not torchao's
    rel = float((got - want).norm() / want.norm())
    assert 0 < rel < 2e-2                                   # int8 activations of the core only
    assert float((got - plain).norm() / plain.norm()) < 2e-2


def test_int8_head_holds_each_row_to_half_a_step():
    """8da8w: symmetric int8 codes with one scale per output row, int8 activations per token."""
    w = q4_1_grid(40, 96, seed=5)
    w[7] *= 50                                               # a row far larger than the rest keeps its own scale
    head = torch.nn.Linear(96, 40, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w))
    layer = int8_linear(head)
    qw = layer.weight
    assert qw.qdata.dtype == torch.int8 and int(qw.qdata.abs().max()) == 127 and tuple(qw.scale.shape) == (40, 1)
    back = (qw.qdata.float() * qw.scale).numpy()
    assert (np.abs(back - w) <= qw.scale.numpy() / 2 + 1e-7).all()
    x = torch.randn(3, 96)
    with torch.no_grad():
        got, want = layer(x), x @ torch.from_numpy(back).T
    assert 0 < float((got - want).norm() / want.norm()) < 5e-2     # the int8 rounding of the activations


@pytest.mark.parametrize("head_bits", [8, 4])
def test_head_bits_choose_the_heads_format(head_bits):
    model, _ = load_model(BUNDLED)
    skipped = quantize_8da4w(model, GROUP, 8, head_bits)
    assert all(".se.fc2" in name for name in skipped)
    assert isinstance(model.model.layers[0].mlp.down_proj, OffsetLinear)
    if head_bits == 8:
        assert isinstance(model.lm_head, torch.nn.Linear) and model.lm_head.weight.qdata.dtype == torch.int8
        assert tuple(model.lm_head.weight.block_size) == (1, model.config.hidden_size)
    else:
        assert isinstance(model.lm_head, OffsetLinear)
        assert tuple(model.lm_head.core.weight.block_size) == (1, GROUP)
