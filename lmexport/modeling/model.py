"""LiquidMetalForCausalLM: the executable form of docs/ARCHITECTURE.md.

Parameter names follow Hugging Face Llama (``model.layers.N.self_attn.q_proj``...)
plus the three new modules, so checkpoints load strictly by name through
``lmexport.tensor_names``. The forward takes and returns all state explicitly,
so the ONNX exporter traces it as it is:

* ``attention_mask`` [B, P+T] covers past and current tokens (1 valid, 0 pad);
* ``past_key_values``: per layer (key, value), each [B, kv_heads, P, head_dim];
* ``past_conv``: per layer [B, H, K-1], the last K-1 convolution inputs;
* ``past_context``: per layer [B, 3, H], running sums for norm_in, norm_post, SE.

Legacy mode has no conv or context state (pass ``None``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lmexport.config import LiquidMetalConfig
from lmexport.modeling.modules import (CONTEXT_SLOTS, AdaptiveRMSNorm, ContextState, SqueezeExcitation, TokenMixing,
                                       rms_normalize, valid_counts)
from lmexport.tensor_names import lookup

KV = tuple[torch.Tensor, torch.Tensor]


class LiquidMetalOutput(NamedTuple):
    logits: torch.Tensor                       # (B, T, V)
    present_key_values: list[KV]               # per layer (B, kv, P+T, D) x2
    present_conv: list[torch.Tensor] | None    # per layer (B, H, K-1)
    present_context: list[torch.Tensor] | None  # per layer (B, 3, H)
    intermediates: dict[str, torch.Tensor] | None  # "layers.N.<module>" -> (B, T, H)


# Module outputs recorded per layer when ``return_intermediates=True``, in order.
LAYER_MODULES = ("norm_in", "token_mixing", "attention", "norm_post", "mlp", "se", "output")


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x / rms(x) in float32. The ONNX export swaps in a fused op here."""
        return rms_normalize(x, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * self.normalize(x).to(x.dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama RoPE tables for the given positions: cos, sin [B, 1, T, head_dim]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64,
                                             device=position_ids.device).float() / head_dim))
    freqs = position_ids.float().unsqueeze(-1) * inv_freq            # (B, T, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)                           # (B, T, D)
    return emb.cos().unsqueeze(1).to(dtype), emb.sin().unsqueeze(1).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: LiquidMetalConfig):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=False)     # (nh*D, H)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)  # (kv*D, H)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)  # (kv*D, H)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=False)     # (H, nh*D)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor,
                past: KV | None) -> tuple[torch.Tensor, KV]:
        out, present = self.attend(self.q_proj(x), self.k_proj(x), self.v_proj(x), cos, sin, bias, past)
        return self.o_proj(out), present                              # (B, T, H)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               bias: torch.Tensor, past: KV | None) -> tuple[torch.Tensor, KV]:
        """RoPE, cache and GQA softmax on projected q, k, v. The ONNX export swaps in a fused op here."""
        return attention_core(q, k, v, cos, sin, bias, past, self.num_heads, self.num_kv_heads)


def attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   bias: torch.Tensor, past: KV | None, num_heads: int, num_kv_heads: int) -> tuple[torch.Tensor, KV]:
    """q (B, T, nh*D), k and v (B, T, kv*D); cos, sin (B, 1, T, D); bias (B, 1, T, P+T).

    Returns the attention output (B, T, nh*D) and the present key and value (B, kv, P+T, D)."""
    b, t, _ = q.shape
    d = q.shape[-1] // num_heads
    q = q.view(b, t, num_heads, d).transpose(1, 2)                    # (B, nh, T, D)
    k = k.view(b, t, num_kv_heads, d).transpose(1, 2)                 # (B, kv, T, D)
    v = v.view(b, t, num_kv_heads, d).transpose(1, 2)                 # (B, kv, T, D)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    if past is not None:
        k = torch.cat([past[0], k], dim=2)                            # (B, kv, P+T, D)
        v = torch.cat([past[1], v], dim=2)
    groups = num_heads // num_kv_heads
    k_all = k.repeat_interleave(groups, dim=1)                        # (B, nh, P+T, D)
    v_all = v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k_all.transpose(2, 3)) / (d ** 0.5)     # (B, nh, T, P+T)
    probs = torch.softmax(scores.float() + bias, dim=-1).to(q.dtype)
    out = torch.matmul(probs, v_all).transpose(1, 2).reshape(b, t, -1)  # (B, T, nh*D)
    return out, (k, v)


class MLP(nn.Module):
    def __init__(self, config: LiquidMetalConfig):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=False)  # (I, H)
        self.up_proj = nn.Linear(h, i, bias=False)    # (I, H)
        self.down_proj = nn.Linear(i, h, bias=False)  # (H, I)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: LiquidMetalConfig):
        super().__init__()
        h = config.hidden_size
        self.input_layernorm = AdaptiveRMSNorm(h, config.adaptive_norm_eps, CONTEXT_SLOTS.index("norm_in"))
        self.token_mixing = TokenMixing(h, config.token_mixing_kernel_size)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = AdaptiveRMSNorm(h, config.adaptive_norm_eps,
                                                        CONTEXT_SLOTS.index("norm_post"))
        self.mlp = MLP(config)
        self.se = SqueezeExcitation(h, config.se_hidden_size, CONTEXT_SLOTS.index("se"))

    def forward(self, x, cos, sin, bias, ctx: ContextState, past_kv, past_window, record=None):
        n1 = self.input_layernorm(x, ctx)                             # (B, T, H)
        m, window = self.token_mixing(n1, ctx.mask, past_window)      # (B, T, H)
        a, present_kv = self.self_attn(m, cos, sin, bias, past_kv)    # (B, T, H)
        x = x + a
        n2 = self.post_attention_layernorm(x, ctx)
        f = self.mlp(n2)
        s = self.se(f, ctx)
        x = x + s
        if record is not None:
            record.extend([n1, m, a, n2, f, s, x])
        return x, present_kv, window


def attention_bias(attention_mask: torch.Tensor, t: int) -> torch.Tensor:
    """Additive bias [B, 1, T, P+T]: 0 where query t may see key s, a large negative elsewhere.

    Query t sits at absolute index P+t; it sees valid keys at or before it. A query
    that sees nothing (left padding) gets a uniform, finite softmax and a garbage
    but finite output, which no valid position ever reads.
    """
    total = attention_mask.shape[1]
    past = total - t
    key_idx = torch.arange(total, device=attention_mask.device)                 # (S,)
    query_idx = torch.arange(t, device=attention_mask.device) + past            # (T,)
    causal = key_idx.unsqueeze(0) <= query_idx.unsqueeze(1)                     # (T, S)
    allowed = causal.unsqueeze(0) & attention_mask.bool().unsqueeze(1)          # (B, T, S)
    neg = torch.finfo(torch.float32).min
    return torch.where(allowed, 0.0, neg).unsqueeze(1)                           # (B, 1, T, S)


def positions_from_mask(attention_mask: torch.Tensor, t: int) -> torch.Tensor:
    """Hugging Face convention: position = number of valid tokens before, pads at 0."""
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.clamp(min=0)
    return pos[:, pos.shape[1] - t:]


class LiquidMetalModel(nn.Module):
    def __init__(self, config: LiquidMetalConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)   # (V, H)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LiquidMetalForCausalLM(nn.Module):
    def __init__(self, config: LiquidMetalConfig):
        super().__init__()
        self.config = config
        self.model = LiquidMetalModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # (V, H)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # ---------------------------------------------------------------- state
    def empty_state(self, batch_size: int, dtype: torch.dtype | None = None, device=None):
        """Zero state for a first call: (past_key_values, past_conv, past_context).

        Context sums are always fp32 (they accumulate over the whole sequence)."""
        c = self.config
        dtype = dtype or self.lm_head.weight.dtype
        device = device or self.lm_head.weight.device
        kv_shape = (batch_size, c.num_key_value_heads, 0, c.head_dim)
        kv = [(torch.zeros(kv_shape, dtype=dtype, device=device),
               torch.zeros(kv_shape, dtype=dtype, device=device)) for _ in range(c.num_hidden_layers)]
        if not c.streaming:
            return kv, None, None
        conv = [torch.zeros(batch_size, c.hidden_size, c.conv_state_width, dtype=dtype, device=device)
                for _ in range(c.num_hidden_layers)]
        context = [torch.zeros(batch_size, len(CONTEXT_SLOTS), c.hidden_size, dtype=torch.float32,
                               device=device) for _ in range(c.num_hidden_layers)]
        return kv, conv, context

    # ---------------------------------------------------------------- forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None,
                past_key_values: list[KV] | None = None,
                past_conv: list[torch.Tensor] | None = None,
                past_context: list[torch.Tensor] | None = None,
                return_intermediates: bool = False) -> LiquidMetalOutput:
        c = self.config
        b, t = input_ids.shape
        if past_key_values is None or (c.streaming and (past_conv is None or past_context is None)):
            kv0, conv0, ctx0 = self.empty_state(b, device=input_ids.device)
            past_key_values = kv0 if past_key_values is None else past_key_values
            past_conv = conv0 if past_conv is None else past_conv
            past_context = ctx0 if past_context is None else past_context
        past_len = past_key_values[0][0].shape[2]
        if attention_mask is None:
            attention_mask = torch.ones(b, past_len + t, dtype=torch.int64, device=input_ids.device)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, t)

        x = self.model.embed_tokens(input_ids)                           # (B, T, H)
        mask_all = attention_mask.float()                                # (B, P+T)
        mask = mask_all[:, mask_all.shape[1] - t:]                       # (B, T)
        past_count = mask_all[:, :mask_all.shape[1] - t].sum(dim=1, keepdim=True)  # (B, 1)
        counts = valid_counts(mask, past_count) if c.streaming else None  # (B, T, 1)
        cos, sin = rope_cos_sin(position_ids, c.head_dim, c.rope_theta, x.dtype)
        bias = attention_bias(attention_mask, t)                          # (B, 1, T, P+T)

        presents_kv, presents_conv, presents_ctx = [], [], []
        intermediates: dict[str, torch.Tensor] | None = {} if return_intermediates else None
        for i, layer in enumerate(self.model.layers):
            ctx = ContextState(mask, counts, past_context[i] if c.streaming else None)
            record: list[torch.Tensor] | None = [] if return_intermediates else None
            x, kv, window = layer(x, cos, sin, bias, ctx, past_key_values[i],
                                  past_conv[i] if c.streaming else None, record)
            presents_kv.append(kv)
            if c.streaming:
                presents_conv.append(window)
                presents_ctx.append(ctx.present())
            if record is not None:
                intermediates.update({f"layers.{i}.{name}": v for name, v in zip(LAYER_MODULES, record)})
        x = self.model.norm(x)
        logits = self.lm_head(x).float()                                  # (B, T, V)
        return LiquidMetalOutput(logits, presents_kv,
                                 presents_conv if c.streaming else None,
                                 presents_ctx if c.streaming else None,
                                 intermediates)


def init_random(model: LiquidMetalForCausalLM, seed: int = 0, std: float = 0.02,
                module_std: float = 0.5) -> LiquidMetalForCausalLM:
    """Deterministic random weights for tests and the bundled demo model.

    Linear weights of the new modules get ``module_std / sqrt(fan_in)``, so their
    gates vary visibly across tokens (a test must see the modules, not an identity);
    the convolution taps get ``module_std``; norm weights are ``1 + 0.1 * noise``.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            entry = lookup(name).entry
            if entry.role == "norm":
                p.copy_(1.0 + 0.1 * noise)
            elif entry.module == "token_mixing":
                p.copy_(module_std * noise)
            elif not entry.llama:                                    # the gates and the SE block
                fan_in = p.shape[-1] if p.dim() > 1 else 1
                p.copy_(module_std / fan_in ** 0.5 * noise)
            else:
                p.copy_(std * noise)
    return model
