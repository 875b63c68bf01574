"""LiquidMetalConfig: the Hugging Face config.json of a Liquid-Metal checkpoint, typed.

Choices docs/ARCHITECTURE.md leaves open are fields here, with their defaults stated:

* ``token_mixing_kernel_size`` (K, default 3) and ``se_reduction`` (r, default 16):
  read from config.json, else from tensor shapes (see ``checkpoint.infer_missing``).
* ``context_mode``: "streaming" (causal running mean, default) or "legacy"
  (mean over the current call, centred convolution). Never guessed.
* ``se_hidden_size`` is ``hidden_size // se_reduction`` (floor), at least 1.
* ``adaptive_norm_eps`` defaults to ``rms_norm_eps``: the adaptive norms use the
  same epsilon as the plain RMSNorm they replace.
* ``context_min_count`` is 1: a position with no valid tokens so far (left
  padding) divides its (zero) sum by 1, so padded positions stay finite.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from lmexport.errors import ConfigError

MODEL_TYPE = "liquid_metal"
CONTEXT_MODES = ("streaming", "legacy")
# model_type values whose config.json we read; "llama" is accepted so that a
# checkpoint published as a modified llama (extra keys, extra tensors) loads.
ACCEPTED_MODEL_TYPES = (MODEL_TYPE, "llama")
MAX_KERNEL_SIZE = 16
# Field-by-field bounds: a config.json outside them is refused before anything is built.
# (name, smallest, largest, may be null)
INT_FIELDS = (("vocab_size", 1, 1 << 21, False), ("hidden_size", 1, 1 << 17, False),
              ("intermediate_size", 1, 1 << 19, False), ("num_hidden_layers", 1, 1024, False),
              ("num_attention_heads", 1, 4096, False), ("num_key_value_heads", 1, 4096, False),
              ("head_dim", 1, 1 << 14, False), ("max_position_embeddings", 1, 1 << 24, False))
FLOAT_FIELDS = ("rms_norm_eps", "rope_theta", "adaptive_norm_eps")     # finite, > 0
TOKEN_FIELDS = ("bos_token_id", "pad_token_id")                        # null or an id of the vocabulary


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class LiquidMetalConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    # Liquid-Metal additions (ARCHITECTURE.md, "The three modules").
    token_mixing_kernel_size: int = 3
    se_reduction: int = 16
    context_mode: str = "streaming"
    adaptive_norm_eps: float | None = None
    model_type: str = MODEL_TYPE
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None and _is_int(self.hidden_size) and _is_int(self.num_attention_heads) \
                and self.num_attention_heads > 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.adaptive_norm_eps is None:
            object.__setattr__(self, "adaptive_norm_eps", self.rms_norm_eps)
        self.check()

    # ------------------------------------------------------------------ derived
    @property
    def se_hidden_size(self) -> int:
        return max(1, self.hidden_size // self.se_reduction)

    @property
    def kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def streaming(self) -> bool:
        return self.context_mode == "streaming"

    @property
    def conv_state_width(self) -> int:
        """Columns of past convolution input kept between calls (K-1)."""
        return self.token_mixing_kernel_size - 1

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        if isinstance(self.eos_token_id, int):
            return [self.eos_token_id]
        return list(self.eos_token_id)

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """Collect every wrong type, range or combination and raise one ConfigError."""
        problems = []
        for name, low, high, _ in INT_FIELDS:
            value = getattr(self, name)
            if value is None and name == "head_dim":
                continue                     # not derived: hidden_size or num_attention_heads is reported
            if not _is_int(value) or not low <= value <= high:
                problems.append(f"{name} must be an integer in {low}..{high}, got {value!r}")
        for name in FLOAT_FIELDS:
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                problems.append(f"{name} must be a finite number above 0, got {value!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            problems.append(f"tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}")
        vocab = self.vocab_size if _is_int(self.vocab_size) else None
        eos = self.eos_token_id
        ids = [(name, getattr(self, name)) for name in TOKEN_FIELDS]
        ids += [("eos_token_id", e) for e in (eos if isinstance(eos, list) else [eos])]
        for name, value in ids:
            if value is not None and (not _is_int(value) or value < 0 or (vocab and value >= vocab)):
                problems.append(f"{name} must be null or a token id in 0..{(vocab or 0) - 1}, got {value!r}")
        sizes_ok = not problems or all(_is_int(getattr(self, n)) and getattr(self, n) > 0
                                       for n in ("num_attention_heads", "num_key_value_heads", "head_dim"))
        if sizes_ok and self.num_attention_heads % self.num_key_value_heads:
            problems.append(f"num_attention_heads ({self.num_attention_heads}) is not a multiple "
                            f"of num_key_value_heads ({self.num_key_value_heads})")
        if sizes_ok and self.head_dim % 2:
            problems.append(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.context_mode not in CONTEXT_MODES:
            problems.append(f"context_mode must be one of {', '.join(CONTEXT_MODES)}, "
                            f"got {self.context_mode!r}")
        k = self.token_mixing_kernel_size
        if not _is_int(k) or not 2 <= k <= MAX_KERNEL_SIZE:
            problems.append(f"token_mixing_kernel_size must be an integer in 2..{MAX_KERNEL_SIZE}, got {k!r}")
        elif self.context_mode == "legacy" and k % 2 == 0:
            problems.append(f"legacy mode needs an odd token_mixing_kernel_size (centred padding), got {k}")
        r, hidden = self.se_reduction, self.hidden_size if _is_int(self.hidden_size) else 1 << 17
        if not _is_int(r) or not 1 <= r <= hidden:
            problems.append(f"se_reduction must be an integer in 1..hidden_size, got {r!r}")
        if self.model_type not in ACCEPTED_MODEL_TYPES:
            problems.append(f"model_type {self.model_type!r} is not a Liquid-Metal or Llama model")
        if problems:
            raise ConfigError("unsupported config: " + "; ".join(problems),
                              hint="see ARCHITECTURE.md for the supported values")

    # ------------------------------------------------------------------ dict io
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LiquidMetalConfig":
        """Build from a config.json dict; unknown keys are kept in ``extra``.

        Raises ConfigError for missing required keys and for RoPE scaling kinds
        or attention layouts this exporter does not implement.
        """
        data = dict(data)
        problems = []
        model_type = data.get("model_type", MODEL_TYPE)
        if model_type not in ACCEPTED_MODEL_TYPES:
            raise ConfigError(f"config.json describes a {model_type!r} model, not a Liquid-Metal "
                              f"or Llama one", hint="lmexport exports only the Liquid-Metal decoder")
        rope_scaling = data.get("rope_scaling")
        if rope_scaling is not None and not isinstance(rope_scaling, dict):
            problems.append(f"rope_scaling must be an object or null, got {rope_scaling!r}")
        elif rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) not in (None, "default"):
            problems.append(f"rope_scaling {rope_scaling!r} is not supported (only unscaled RoPE)")
        rope_params = data.get("rope_parameters")
        if isinstance(rope_params, dict):
            if rope_params.get("rope_type", "default") != "default":
                problems.append(f"rope_parameters {rope_params!r} are not supported (only unscaled RoPE)")
            data.setdefault("rope_theta", rope_params.get("rope_theta", 10000.0))
        elif rope_params is not None:
            problems.append(f"rope_parameters must be an object or null, got {rope_params!r}")
        for flag in ("attention_bias", "mlp_bias"):
            if data.get(flag) not in (None, False):
                problems.append(f"{flag}={data[flag]!r} is not supported (only false)")
        if data.get("hidden_act", "silu") != "silu":
            problems.append(f"hidden_act {data['hidden_act']!r} is not supported (SwiGLU uses silu)")
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        missing = [key for key in required if key not in data]
        if missing:
            problems.append("missing required key(s) " + ", ".join(missing))
        if problems:
            raise ConfigError("unsupported config.json: " + "; ".join(problems))
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["model_type"] = model_type
        extra = {k: v for k, v in data.items() if k not in known}
        try:
            return cls(**kwargs, extra=extra)
        except TypeError as exc:
            raise ConfigError(f"config.json has a value of the wrong type: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        out["model_type"] = MODEL_TYPE
        out["architectures"] = ["LiquidMetalForCausalLM"]
        out.setdefault("hidden_act", "silu")
        for stale in ("auto_map",):  # never point at code in a model folder
            out.pop(stale, None)
        return out

    def replace(self, **changes: Any) -> "LiquidMetalConfig":
        return dataclasses.replace(self, **changes)
