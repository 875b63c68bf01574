"""The Liquid-Metal decoder as an ExecuTorch program: state in mutable buffers, updated by position.

ExecuTorch's LLM runner (``extension/llm/runner``) calls one method,
``forward(tokens [1, T] int64, input_pos [1] int64) -> logits``, where ``input_pos`` is the
position of the first token of the call; everything the model carries between calls lives in
buffers that the program mutates in place (as ``examples/models/llama`` keeps its KV cache and
``examples/models/lfm2/short_conv.py`` its conv window). Here, per layer (ARCHITECTURE.md,
"State carried between calls"):

* ``key_cache`` / ``value_cache`` [1, kv_heads, max_context, head_dim]: keys and values written
  at ``input_pos .. input_pos+T-1``; attention reads only positions ``< input_pos+T``, all of them
  written in the current sequence, so the cache needs no initial value and is not serialized;
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
``Attention`` for ``CacheAttention`` (the same projections and ``attention_core`` rotation, its
keys and values written into the cache) and calls the layers as they are.
"""
from __future__ import annotations

import torch
from torch import nn

from lmexport.modeling.model import Attention, LiquidMetalForCausalLM, rope_cos_sin, rotate_half
from lmexport.modeling.modules import CONTEXT_SLOTS, ContextState, valid_counts

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


class CacheAttention(nn.Module):
    """``Attention`` with its keys and values kept in a fixed-size cache buffer.

    Called as the layer calls ``Attention``; ``past`` is the call's start position (an int, symbolic
    in the trace)."""

    def __init__(self, attn: Attention, max_context: int):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.num_heads, self.num_kv_heads, self.head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        shape = (1, self.num_kv_heads, max_context, self.head_dim)
        self.register_buffer("key_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("value_cache", torch.zeros(shape), persistent=False)

    def forward(self, x, cos, sin, bias, past):
        b, t, _ = x.shape
        d, nh, kv = self.head_dim, self.num_heads, self.num_kv_heads
        q = self.q_proj(x).view(b, t, nh, d).transpose(1, 2)             # (1, nh, T, D)
        k = self.k_proj(x).view(b, t, kv, d).transpose(1, 2)             # (1, kv, T, D)
        v = self.v_proj(x).view(b, t, kv, d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        start = past
        self.key_cache.narrow(2, start, t).copy_(k)
        self.value_cache.narrow(2, start, t).copy_(v)
        keys = self.key_cache.narrow(2, 0, start + t)                    # (1, kv, P+T, D)
        values = self.value_cache.narrow(2, 0, start + t)
        groups = nh // kv
        keys = keys.repeat_interleave(groups, dim=1)                     # (1, nh, P+T, D)
        values = values.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, keys.transpose(2, 3)) / (d ** 0.5)     # (1, nh, T, P+T)
        probs = torch.softmax(scores + bias, dim=-1)
        out = torch.matmul(probs, values).transpose(1, 2).reshape(b, t, -1)  # (1, T, nh*D)
        return self.o_proj(out), None


class ExecutorchDecoder(nn.Module):
    """``forward(tokens [1, T], input_pos [1]) -> logits [1, T, V]`` with the state in buffers."""

    def __init__(self, model: LiquidMetalForCausalLM, max_context: int):
        super().__init__()
        c = model.config
        self.model = model
        self.max_context = max_context
        for layer in model.model.layers:
            layer.self_attn = CacheAttention(layer.self_attn, max_context)
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
        cos, sin = rope_cos_sin(positions, c.head_dim, c.rope_theta, x.dtype)           # (1, 1, T, D)
        start = input_pos[0].item()                                                     # one symbol for the trace
        torch._check_is_size(start)
        torch._check(start + t <= self.max_context)
        keys = torch.arange(start + t, dtype=torch.int64)                               # (P+T,)
        bias = torch.where(keys.unsqueeze(0) <= positions.transpose(0, 1), 0.0,
                           torch.finfo(torch.float32).min).view(1, 1, t, -1)            # (1, 1, T, P+T)
        for i, layer in enumerate(self.model.model.layers):
            conv_buf = getattr(self, STATE_BUFFERS["conv"].format(layer=i))
            ctx_buf = getattr(self, STATE_BUFFERS["context"].format(layer=i))
            ctx = ContextState(mask, counts, torch.where(fresh, torch.zeros_like(ctx_buf), ctx_buf))
            past_window = torch.where(fresh, torch.zeros_like(conv_buf), conv_buf)
            x, _, window = layer(x, cos, sin, bias, ctx, start, past_window)
            conv_buf.copy_(window)
            ctx_buf.copy_(ctx.present())
        return self.model.lm_head(self.model.model.norm(x)).float()                    # (1, T, V)
