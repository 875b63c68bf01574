"""The Liquid-Metal decoder as an ExecuTorch program: state in mutable buffers, updated by position.

ExecuTorch's LLM runner (``extension/llm/runner``) calls one method,
``forward(tokens [1, T] int64, input_pos [1] int64) -> logits``, where ``input_pos`` is the
position of the first token of the call; everything the model carries between calls lives in
buffers that the program mutates in place (as ``examples/models/llama`` keeps its KV cache and
``examples/models/lfm2/short_conv.py`` its conv window). Here, per layer (ARCHITECTURE.md,
"State carried between calls"):

* ``key_cache`` / ``value_cache`` [1, max_context, kv_heads, head_dim] (sequence-major, the layout
  of ExecuTorch's LLM kernels): written at ``input_pos .. input_pos+T-1`` by ``llama::update_cache``
  and read by ``llama::custom_sdpa`` (causal attention over positions ``< input_pos+T``, grouped
  heads without copies), the kernels ExecuTorch's own Llama export uses and its runners ship (the
  Android AAR, the iOS ``kernels_llm`` package, ``llama_main``). Every position read was written in
  the current sequence, so the cache needs no initial value and is not serialized;
* ``conv_state`` [1, H, K-1]: the last K-1 token-mixing inputs;
* ``context_sums`` [1, 3, H]: the running sums of norm_in, norm_post and SE; the count of
  tokens is ``input_pos + t + 1`` (batch 1, no padding).

**A new sequence starts at input_pos = 0.** A call at position 0 reads zeros instead of the
conv and context buffers (``torch.where``, so stale values never leak in), and the KV cache is
read only up to the call's last position. This is the runner's own convention: its ``reset()``
sets the position to 0. The conv and context buffers are also serialized as zeros
(``InitializedMutableBufferPass`` with ``INIT_PATTERNS``), so a freshly loaded program holds a
defined state even before its first call.

The math is the PyTorch model's own (``lmexport.modeling``): the wrapper swaps each layer's
``Attention`` for ``CacheAttention`` (the same projections and rotation, its keys and values
written into the cache) and calls the layers as they are.

**Written for XNNPACK.** Every op that XNNPACK does not take runs in ExecuTorch's portable kernels
and cuts the layer into one more delegated subgraph (slower to run, and each one is compiled
separately at export). So the program avoids shapes that depend on ``input_pos`` (an unbacked
symbol in the trace, which XNNPACK refuses): attention is the custom kernel above, not a
softmax over a slice of the cache; RoPE's ``rotate_half`` is a linear with a constant signed
permutation (``rotation``, exact: one nonzero product per output) instead of slices; views are
by -1, not by the symbolic length; and the RMS norms take their mean as a 4-D average pooling
(``pooled_rms_normalize``). What stays in portable kernels per layer: the cache writes and the
attention kernel, the running sums (``cumsum``) and the conv window's slice.
"""
from __future__ import annotations

import torch
from torch import nn

from lmexport.modeling.model import Attention, LiquidMetalForCausalLM, RMSNorm, rope_cos_sin
from lmexport.modeling.modules import CONTEXT_SLOTS, AdaptiveRMSNorm, ContextState, valid_counts

# Buffer name (within the wrapper) of each state kind, {layer} the layer index; the sidecar JSON
# lists them and INIT_PATTERNS picks the ones serialized with their (zero) initial value.
STATE_BUFFERS = {"key": "model.model.layers.{layer}.self_attn.key_cache",
                 "value": "model.model.layers.{layer}.self_attn.value_cache",
                 "conv": "conv_state_{layer}",
                 "context": "context_sums_{layer}"}
# Substrings of the exported placeholder names (dots become underscores) serialized with their value.
INIT_PATTERNS = ("conv_state_", "context_sums_")
# The forward method's IO, in order (ExecuTorch's LLM runner contract).
INPUTS = (("tokens", "int64", (1, "sequence_length")), ("input_pos", "int64", (1,)))
OUTPUTS = (("logits", "float32", (1, "sequence_length", "vocab_size")),)


def state_shapes(config, max_context: int) -> dict[str, list[int]]:
    """Each state kind's buffer shape (one per layer)."""
    from lmexport.modeling.modules import CONTEXT_SLOTS

    c = config
    cache = [1, max_context, c.num_key_value_heads, c.head_dim]       # sequence-major (llama::update_cache)
    return {"key": cache, "value": list(cache), "conv": [1, c.hidden_size, c.conv_state_width],
            "context": [1, len(CONTEXT_SLOTS), c.hidden_size]}


def llm_kernels():
    """ExecuTorch's LLM kernels (``llama::update_cache``, ``llama::custom_sdpa``): importing the module
    registers them for tracing and in ``executorch.runtime``."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401

    return torch.ops.llama


def rotation(head_dim: int) -> torch.Tensor:
    """R with ``x @ R == rotate_half(x)`` (lmexport.modeling.model): [-x2, x1] for x = [x1, x2]."""
    half = head_dim // 2
    r = torch.zeros(head_dim, head_dim)
    r[torch.arange(half) + half, torch.arange(half)] = -1.0
    r[torch.arange(half), torch.arange(half) + half] = 1.0
    return r


def pooled_rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``modeling.modules.rms_normalize`` with the mean of squares over [1, T, H] taken as XNNPACK's
    global average pooling of [T, 1, H, 1] (a mean over the last axis of a 3-D tensor does not lower)."""
    x32 = x.float()
    squares = (x32 * x32).reshape(-1, 1, x32.shape[-1], 1)
    mean = squares.mean(dim=(2, 3), keepdim=True).view(x32.shape[0], -1, 1)         # (1, T, 1)
    return x32 * torch.rsqrt(mean + eps)


class PooledRMSNorm(RMSNorm):
    def normalize(self, x):
        return pooled_rms_normalize(x, self.eps)


class PooledAdaptiveRMSNorm(AdaptiveRMSNorm):
    def normalize(self, x):
        return pooled_rms_normalize(x, self.eps)


_SWAPS = ((RMSNorm, PooledRMSNorm), (AdaptiveRMSNorm, PooledAdaptiveRMSNorm))


class CacheAttention(nn.Module):
    """``Attention`` with its keys and values kept in a fixed-size cache buffer.

    Called as the layer calls ``Attention``; ``cos``/``sin`` are [1, T, 1, D] (sequence-major) and
    ``past`` is the call's start position (an int, symbolic in the trace)."""

    def __init__(self, attn: Attention, max_context: int):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.num_heads, self.num_kv_heads, self.head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        shape = (1, max_context, self.num_kv_heads, self.head_dim)
        self.register_buffer("key_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("value_cache", torch.zeros(shape), persistent=False)
        # rotate_half as a linear's weight (linear(x, R^T) = x @ R): a constant, as XNNPACK wants a weight
        self.register_buffer("rotation_weight", rotation(self.head_dim).t().contiguous(), persistent=False)

    def forward(self, x, cos, sin, bias, past):
        b = x.shape[0]
        d, nh, kv = self.head_dim, self.num_heads, self.num_kv_heads
        # views by -1, not by T: a view whose size is a symbol does not lower to XNNPACK
        q = self.q_proj(x).view(b, -1, nh, d)                             # (1, T, nh, D)
        k = self.k_proj(x).view(b, -1, kv, d)                             # (1, T, kv, D)
        v = self.v_proj(x).view(b, -1, kv, d)
        q = q * cos + nn.functional.linear(q, self.rotation_weight) * sin
        k = k * cos + nn.functional.linear(k, self.rotation_weight) * sin
        ops = llm_kernels()
        ops.update_cache(k, self.key_cache, past)
        ops.update_cache(v, self.value_cache, past)
        out = ops.custom_sdpa(q, self.key_cache, self.value_cache, past, None, 0.0, True)   # (1, T, nh, D)
        return self.o_proj(out.reshape(b, -1, nh * d)), None


class ExecutorchDecoder(nn.Module):
    """``forward(tokens [1, T], input_pos [1]) -> logits [1, T, V]`` with the state in buffers."""

    def __init__(self, model: LiquidMetalForCausalLM, max_context: int):
        super().__init__()
        c = model.config
        self.model = model
        self.max_context = max_context
        for layer in model.model.layers:
            layer.self_attn = CacheAttention(layer.self_attn, max_context)
        for module in model.modules():          # the export's own copy (build_program deep-copies)
            for plain, pooled in _SWAPS:
                if type(module) is plain:
                    module.__class__ = pooled
        for i in range(c.num_hidden_layers):
            self.register_buffer(STATE_BUFFERS["conv"].format(layer=i),
                                 torch.zeros(1, c.hidden_size, c.conv_state_width), persistent=False)
            self.register_buffer(STATE_BUFFERS["context"].format(layer=i),
                                 torch.zeros(1, len(CONTEXT_SLOTS), c.hidden_size), persistent=False)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        c = self.model.config
        t = tokens.shape[1]
        positions = (input_pos[0] + torch.arange(t, dtype=torch.int64)).unsqueeze(0)   # (1, T)
        fresh = (input_pos == 0).view(1, 1, 1)                                          # a new sequence
        mask = torch.ones(1, t)                                                         # (1, T)
        counts = valid_counts(mask, input_pos.float().view(1, 1))                       # (1, T, 1)
        x = self.model.model.embed_tokens(tokens)                                       # (1, T, H)
        cos, sin = (f.transpose(1, 2) for f in rope_cos_sin(positions, c.head_dim, c.rope_theta, x.dtype))
        start = input_pos[0].item()                                                     # one symbol for the trace
        torch._check(start >= 0)
        torch._check(start + t <= self.max_context)
        for i, layer in enumerate(self.model.model.layers):
            conv_buf = getattr(self, STATE_BUFFERS["conv"].format(layer=i))
            ctx_buf = getattr(self, STATE_BUFFERS["context"].format(layer=i))
            ctx = ContextState(mask, counts, torch.where(fresh, torch.zeros_like(ctx_buf), ctx_buf))
            past_window = torch.where(fresh, torch.zeros_like(conv_buf), conv_buf)
            x, _, window = layer(x, cos, sin, None, ctx, start, past_window)
            conv_buf.copy_(window)
            ctx_buf.copy_(ctx.present())
        return self.model.lm_head(self.model.model.norm(x)).float()                    # (1, T, V)
