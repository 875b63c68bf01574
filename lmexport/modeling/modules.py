"""The three Liquid-Metal modules and the context (running mean) they share.

Shapes: B batch, T tokens of this call, H hidden size, K conv kernel size.
``mask`` is the float attention mask of this call's tokens, [B, T], 1 = valid.
Each function returns its output and, in streaming mode, the state to carry.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2 over the last axis) + eps), computed and returned in float32."""
    x32 = x.float()
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)


def valid_counts(mask: torch.Tensor, past_count: torch.Tensor) -> torch.Tensor:
    """Valid tokens at or before each position of this call, at least 1: [B, T, 1].

    mask [B, T]; past_count [B, 1] (valid tokens before this call). The same for every
    context of every layer, so the model computes it once per call. A position with no
    valid token yet divides its zero sum by 1."""
    return (past_count.unsqueeze(1) + torch.cumsum(mask, dim=1).unsqueeze(-1)).clamp(min=1.0)


def streaming_context(v: torch.Tensor, mask: torch.Tensor, past_sum: torch.Tensor,
                      counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal mean over valid tokens: context(v)[t] = sum(v[<=t]) / count(<=t).

    v [B, T, H]; mask [B, T]; past_sum [B, 1, H]; counts [B, T, 1] (``valid_counts``).
    Returns the context [B, T, H] and the new running sum [B, 1, H].
    """
    v = v * mask.unsqueeze(-1)                                       # (B, T, H) pads -> 0
    sums = past_sum + torch.cumsum(v, dim=1)                         # (B, T, H)
    return sums / counts, sums[:, -1:, :]


def call_context(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Legacy context: mean over the valid tokens of this call, the same for every t."""
    v = v * mask.unsqueeze(-1)                                       # (B, T, H)
    count = mask.sum(dim=1, keepdim=True).clamp(min=1.0)             # (B, 1)
    return (v.sum(dim=1) / count).unsqueeze(1).expand_as(v)          # (B, T, H)


class ContextState:
    """The per-layer context inputs one module sees: mask, mode and its running sum."""

    def __init__(self, mask: torch.Tensor, counts: torch.Tensor | None, past_sums: torch.Tensor | None):
        self.mask = mask                  # (B, T) float
        self.counts = counts              # (B, T, 1) float (valid_counts), streaming only
        # (B, 3, H) -> one (B, 1, H) running sum per slot, streaming only
        self.past_sums = past_sums.split(1, dim=1) if past_sums is not None else None
        self.new_sums: dict[int, torch.Tensor] = {}

    @property
    def streaming(self) -> bool:
        return self.past_sums is not None

    def context(self, v: torch.Tensor, slot: int) -> torch.Tensor:
        if not self.streaming:
            return call_context(v, self.mask)
        ctx, new_sum = streaming_context(v, self.mask, self.past_sums[slot], self.counts)
        self.new_sums[slot] = new_sum
        return ctx

    def present(self) -> torch.Tensor:
        return torch.cat([self.new_sums[i] for i in range(len(CONTEXT_SLOTS))], dim=1)  # (B, 3, H)


# Slots of the [B, 3, H] context-sum state, in this order.
CONTEXT_SLOTS = ("norm_in", "norm_post", "se")


class AdaptiveRMSNorm(nn.Module):
    """y = w * r * sigmoid(gate(context(r))), r = x * rsqrt(mean(x^2) + eps)."""

    def __init__(self, hidden_size: int, eps: float, slot: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))         # (H,)
        self.gate = nn.Linear(hidden_size, hidden_size, bias=True)   # (H, H) + (H,)
        self.eps = eps
        self.slot = slot

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """r, (B, T, H) float32. The ONNX export swaps in a fused op here."""
        return rms_normalize(x, self.eps)

    def forward(self, x: torch.Tensor, ctx: ContextState) -> torch.Tensor:
        dtype = x.dtype
        r = self.normalize(x)                                        # (B, T, H) fp32
        c = ctx.context(r, self.slot).to(dtype)                      # (B, T, H)
        g = torch.sigmoid(self.gate(c).float())                      # (B, T, H) fp32
        return (self.weight.float() * r * g).to(dtype)


class TokenMixing(nn.Module):
    """Depthwise Conv1d over tokens: causal with a carried window, or centred (legacy)."""

    def __init__(self, hidden_size: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(hidden_size, hidden_size, kernel_size, groups=hidden_size, bias=True)
        self.kernel_size = kernel_size                               # weight (H, 1, K), bias (H,)

    def forward(self, n: torch.Tensor, mask: torch.Tensor,
                past_window: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = (n * mask.unsqueeze(-1).to(n.dtype)).transpose(1, 2)    # (B, H, T) pads -> 0
        if past_window is None:  # legacy: zero padding on both sides of this call
            return self.depthwise(x, self.kernel_size // 2).transpose(1, 2), None
        window = torch.cat([past_window.to(x.dtype), x], dim=2)      # (B, H, K-1+T)
        y = self.depthwise(window, 0)                                # (B, H, T)
        return y.transpose(1, 2), window[:, :, window.shape[2] - (self.kernel_size - 1):]

    def depthwise(self, x: torch.Tensor, padding: int) -> torch.Tensor:
        """The convolution itself, (B, H, L) -> (B, H, L + 2*padding - K + 1). The ONNX
        export swaps in a 2-D form here."""
        return F.conv1d(x, self.conv.weight, self.conv.bias, padding=padding, groups=x.shape[1])


class SqueezeExcitation(nn.Module):
    """y = f * sigmoid(fc2(relu(fc1(context(f)))))."""

    def __init__(self, hidden_size: int, se_hidden_size: int, slot: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, se_hidden_size, bias=True)  # (H/r, H)
        self.fc2 = nn.Linear(se_hidden_size, hidden_size, bias=True)  # (H, H/r)
        self.slot = slot

    def forward(self, f: torch.Tensor, ctx: ContextState) -> torch.Tensor:
        c = ctx.context(f.float(), self.slot).to(f.dtype)            # (B, T, H)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(c))).float())     # (B, T, H) fp32
        return (f.float() * s).to(f.dtype)
