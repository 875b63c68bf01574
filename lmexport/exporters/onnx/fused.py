"""Fused operators for the exported graph: ONNX opset-23 ``Attention``, ``RotaryEmbedding``
and ``RMSNormalization`` instead of the dozens of small ops torch.onnx writes for them.

Why: a decode step runs one token through every layer, so per-node overhead rivals the
weight reads once the weights are quantized. Decomposed, a Liquid-Metal layer is about
110 nodes (the GQA ``repeat_interleave`` alone is an Unsqueeze/Expand/Reshape chain per
K and V, plus the KV Concat, the rotate_half Slice/Neg/Concat and the norm's
Pow/ReduceMean/Add/Sqrt/Reciprocal); fused it is about 60 (benchmarks/RESULTS.md has the
before and after). The token-mixing convolution is also written as a 2-D Conv, which
onnxruntime runs with its depthwise kernel (``FusedTokenMixing``).

The standard opset-23 ops are chosen over onnxruntime's contrib ``GroupQueryAttention``
because GroupQueryAttention refuses a batch of more than one row that continues with
several tokens (chunked prefill after a past), which this graph must run, and because
standard ops keep the graph readable by any ONNX consumer.

Export rewrite (STYLE.md, rule 7): ``fuse_modules`` swaps the class of the export
copy's attention, norm and token-mixing modules for subclasses that override one hook
each (``Attention.attend``, ``normalize``, ``TokenMixing.depthwise``); attention and
norms call the two custom ops below, whose eager forms call the modeling functions
(``attention_core``, ``rms_normalize``), so no math is written twice, and
``TRANSLATIONS`` tells torch.onnx which ONNX ops each one becomes. The graph interface
(inputs, outputs, state) does not change.

Choices written down:

* The attention mask is boolean, [B, 1, T, P+T], read off the model's additive bias
  (causal and left padding in one tensor), so padded rows behave as in PyTorch and a
  fully padded query row stays finite; ``is_causal`` is 0. Boolean, not additive: it
  needs no cast in an fp16 graph (float32's minimum would become -inf there), and it is
  the mask form onnxruntime's CUDA kernels accept for decoding with a past.
* ``softmax_precision`` is not set: in an fp32 graph softmax is float32 anyway, and
  onnxruntime's CUDA Attention kernels reject the attribute (NOT_IMPLEMENTED). In an
  fp16 graph softmax therefore follows the op's implementation, not PyTorch's float32.
* Rotary tables are passed per call ([B, T, head_dim/2], no ``position_ids`` and no
  max-position cache), so any position id the caller gives works, as in the plain graph.
* ``RMSNormalization`` gets a scale of ones and computes in float32 (``stash_type`` 1);
  the weight (and the adaptive gate) multiply afterwards, exactly as the modules do.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmexport.modeling.model import Attention, RMSNorm, attention_core
from lmexport.modeling.modules import AdaptiveRMSNorm, TokenMixing
from lmexport.modeling.modules import rms_normalize as reference_rms_normalize

# ---------------------------------------------------------------- custom ops (eager: the modeling math)

@torch.library.custom_op("lmexport::attention", mutates_args=())
def attention(q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, allowed: Tensor,
              past_key: Tensor, past_value: Tensor, num_heads: int,
              kv_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """RoPE on q and k, then causal GQA with a KV cache (``modeling.model.attention_core``).

    q (B, T, nh*D); k, v (B, T, kv*D); cos, sin (B, T, D/2); allowed (B, 1, T, P+T) bool;
    past_key, past_value (B, kv, P, D). Returns out (B, T, nh*D), present key and value
    (B, kv, P+T, D)."""
    cos_full = torch.cat([cos, cos], dim=-1).unsqueeze(1)                 # (B, 1, T, D)
    sin_full = torch.cat([sin, sin], dim=-1).unsqueeze(1)
    bias = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)     # as modeling.attention_bias
    out, (key, value) = attention_core(q, k, v, cos_full, sin_full, bias, (past_key, past_value),
                                       num_heads, kv_heads)
    return out, key, value


@attention.register_fake
def _(q, k, v, cos, sin, allowed, past_key, past_value, num_heads, kv_heads):
    b, t, _ = q.shape
    shape = (b, kv_heads, past_key.shape[2] + t, past_key.shape[3])
    return q.new_empty(q.shape), past_key.new_empty(shape), past_value.new_empty(shape)


@torch.library.custom_op("lmexport::rms_normalize", mutates_args=())
def rms_normalize(x: Tensor, eps: float) -> Tensor:
    """``modeling.modules.rms_normalize``: x / rms(x), computed and returned in float32."""
    return reference_rms_normalize(x, eps)


@rms_normalize.register_fake
def _(x, eps):
    return x.new_empty(x.shape, dtype=torch.float32)


# ---------------------------------------------------------------- ONNX translations

def _attention_onnx(q, k, v, cos, sin, allowed, past_key, past_value, num_heads: int, kv_heads: int):
    from onnxscript import opset23 as op

    q = op.RotaryEmbedding(q, cos, sin, num_heads=num_heads)
    k = op.RotaryEmbedding(k, cos, sin, num_heads=kv_heads)
    out, present_key, present_value, _ = op.Attention(    # the 4th (qk scores) is trimmed later
        q, k, v, allowed, past_key, past_value, q_num_heads=num_heads, kv_num_heads=kv_heads)
    return out, present_key, present_value


def _rms_normalize_onnx(x, eps: float):
    from onnxscript import opset23 as op

    x32 = op.Cast(x, to=1)                                                # FLOAT
    ones = op.Expand(op.Constant(value_float=1.0), op.Shape(x32, start=-1))
    return op.RMSNormalization(x32, ones, axis=-1, epsilon=eps, stash_type=1)


TRANSLATIONS = {
    torch.ops.lmexport.attention.default: _attention_onnx,
    torch.ops.lmexport.rms_normalize.default: _rms_normalize_onnx,
}


# ---------------------------------------------------------------- module swaps (one hook each)

class FusedAttention(Attention):
    """RoPE, cache concat and GQA softmax as the ``attention`` op."""

    def attend(self, q, k, v, cos, sin, bias, past):
        half = self.head_dim // 2
        cos_h, sin_h = cos[:, 0, :, :half], sin[:, 0, :, :half]          # (B, T, D/2)
        allowed = bias == 0.0                                             # (B, 1, T, P+T) bool
        out, key, value = attention(q, k, v, cos_h, sin_h, allowed, past[0], past[1],
                                    self.num_heads, self.num_kv_heads)
        return out, (key, value)


class FusedAdaptiveRMSNorm(AdaptiveRMSNorm):
    def normalize(self, x):
        return rms_normalize(x, self.eps)


class FusedRMSNorm(RMSNorm):
    def normalize(self, x):
        return rms_normalize(x, self.eps)


class FusedTokenMixing(TokenMixing):
    """The depthwise convolution as a 2-D Conv over (B, H, 1, L) with its weight stored
    (H, 1, 1, K): onnxruntime's CPU provider runs 2-D depthwise convolutions with a
    dedicated kernel and 1-D ones through a generic path (measured at H=2048: about
    18 us against 180 us per decode call). The stored bytes are the canonical tensor's."""

    def depthwise(self, x, padding):
        return F.conv2d(x.unsqueeze(2), self.conv.weight, self.conv.bias, padding=(0, padding),
                        groups=x.shape[1]).squeeze(2)


_SWAPS = ((Attention, FusedAttention), (AdaptiveRMSNorm, FusedAdaptiveRMSNorm), (RMSNorm, FusedRMSNorm),
          (TokenMixing, FusedTokenMixing))


def fuse_modules(model: nn.Module) -> None:
    """Swap, in place, the class of every attention, norm and token-mixing module of an
    export copy (never of the caller's model: the conv weight is replaced by a view)."""
    for module in model.modules():
        for plain, fused in _SWAPS:
            if type(module) is plain:
                module.__class__ = fused
                if fused is FusedTokenMixing:
                    conv = module.conv
                    conv.weight = nn.Parameter(conv.weight.detach().unsqueeze(2), requires_grad=False)
