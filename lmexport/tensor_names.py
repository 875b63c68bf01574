"""The one tensor-name table, and the layout transforms that go with it.

Every tensor of a Liquid-Metal model has one entry: its canonical name (the
Hugging Face parameter name, also used for ONNX initializers), the names other
conversion scripts used for it (aliases), its GGUF name, the module it belongs
to (for parity localisation and GGUF type rules) and its GGUF layout transform.
Checkpoint loading, both exporters and the GGUF reader all read this table.
``{bid}`` stands for the layer index.

``PACKS`` declares the weights the ONNX exporter stores as one initializer (and one
MatMul): matrices that read the same input, side by side along their output axis.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from lmexport.config import LiquidMetalConfig

# GGUF type classes: "norm", "bias" and "conv" stay F32; "matrix"/"embedding" take the outtype.
ROLES = ("embedding", "matrix", "norm", "bias", "conv")


@dataclass(frozen=True)
class TensorEntry:
    name: str                   # canonical (HF) template, e.g. "model.layers.{bid}.self_attn.q_proj.weight"
    gguf: str                   # GGUF template, e.g. "blk.{bid}.attn_q.weight"
    module: str                 # "embedding", "norm_in", "token_mixing", "attention", "norm_post", "mlp", "se", "final_norm", "lm_head"
    role: str                   # one of ROLES
    shape: Callable[[LiquidMetalConfig], tuple[int, ...]]
    aliases: tuple[str, ...] = ()
    llama: bool = True          # part of a plain Llama checkpoint
    gguf_layout: str | None = None  # a key of LAYOUTS, applied on the way into GGUF
    sigmoid_bias: bool = False  # the bias of a sigmoid gate (convert opens the gate through it)

    @property
    def per_layer(self) -> bool:
        return "{bid}" in self.name


def _h(c): return c.hidden_size
def _qdim(c): return c.num_attention_heads * c.head_dim
def _kvdim(c): return c.num_key_value_heads * c.head_dim


L = "model.layers.{bid}."
TABLE: tuple[TensorEntry, ...] = (
    TensorEntry("model.embed_tokens.weight", "token_embd.weight", "embedding", "embedding",
                lambda c: (c.vocab_size, c.hidden_size)),
    # adaptive norm before attention
    TensorEntry(L + "input_layernorm.weight", "blk.{bid}.attn_norm.weight", "norm_in", "norm",
                lambda c: (_h(c),)),
    TensorEntry(L + "input_layernorm.gate.weight", "blk.{bid}.attn_norm_gate.weight", "norm_in", "matrix",
                lambda c: (_h(c), _h(c)), aliases=(L + "input_layernorm.gate_proj.weight",), llama=False),
    TensorEntry(L + "input_layernorm.gate.bias", "blk.{bid}.attn_norm_gate.bias", "norm_in", "bias",
                lambda c: (_h(c),), aliases=(L + "input_layernorm.gate_proj.bias",), llama=False, sigmoid_bias=True),
    # token mixing (depthwise conv)
    TensorEntry(L + "token_mixing.conv.weight", "blk.{bid}.token_conv.weight", "token_mixing", "conv",
                lambda c: (_h(c), 1, c.token_mixing_kernel_size),
                aliases=(L + "token_mixing.weight", L + "token_mixer.conv.weight"), llama=False,
                gguf_layout="conv_squeeze"),
    TensorEntry(L + "token_mixing.conv.bias", "blk.{bid}.token_conv.bias", "token_mixing", "bias",
                lambda c: (_h(c),), aliases=(L + "token_mixing.bias", L + "token_mixer.conv.bias"), llama=False),
    # attention
    TensorEntry(L + "self_attn.q_proj.weight", "blk.{bid}.attn_q.weight", "attention", "matrix",
                lambda c: (_qdim(c), _h(c)), gguf_layout="rope_q"),
    TensorEntry(L + "self_attn.k_proj.weight", "blk.{bid}.attn_k.weight", "attention", "matrix",
                lambda c: (_kvdim(c), _h(c)), gguf_layout="rope_k"),
    TensorEntry(L + "self_attn.v_proj.weight", "blk.{bid}.attn_v.weight", "attention", "matrix",
                lambda c: (_kvdim(c), _h(c))),
    TensorEntry(L + "self_attn.o_proj.weight", "blk.{bid}.attn_output.weight", "attention", "matrix",
                lambda c: (_h(c), _qdim(c))),
    # adaptive norm after attention
    TensorEntry(L + "post_attention_layernorm.weight", "blk.{bid}.ffn_norm.weight", "norm_post", "norm",
                lambda c: (_h(c),)),
    TensorEntry(L + "post_attention_layernorm.gate.weight", "blk.{bid}.ffn_norm_gate.weight", "norm_post",
                "matrix", lambda c: (_h(c), _h(c)),
                aliases=(L + "post_attention_layernorm.gate_proj.weight",), llama=False),
    TensorEntry(L + "post_attention_layernorm.gate.bias", "blk.{bid}.ffn_norm_gate.bias", "norm_post", "bias",
                lambda c: (_h(c),), aliases=(L + "post_attention_layernorm.gate_proj.bias",), llama=False,
                sigmoid_bias=True),
    # SwiGLU MLP
    TensorEntry(L + "mlp.gate_proj.weight", "blk.{bid}.ffn_gate.weight", "mlp", "matrix",
                lambda c: (c.intermediate_size, _h(c))),
    TensorEntry(L + "mlp.up_proj.weight", "blk.{bid}.ffn_up.weight", "mlp", "matrix",
                lambda c: (c.intermediate_size, _h(c))),
    TensorEntry(L + "mlp.down_proj.weight", "blk.{bid}.ffn_down.weight", "mlp", "matrix",
                lambda c: (_h(c), c.intermediate_size)),
    # squeeze-and-excitation
    TensorEntry(L + "se.fc1.weight", "blk.{bid}.se_fc1.weight", "se", "matrix",
                lambda c: (c.se_hidden_size, _h(c)),
                aliases=(L + "se_block.fc1.weight", L + "squeeze_excitation.fc1.weight"), llama=False),
    TensorEntry(L + "se.fc1.bias", "blk.{bid}.se_fc1.bias", "se", "bias", lambda c: (c.se_hidden_size,),
                aliases=(L + "se_block.fc1.bias", L + "squeeze_excitation.fc1.bias"), llama=False),
    TensorEntry(L + "se.fc2.weight", "blk.{bid}.se_fc2.weight", "se", "matrix",
                lambda c: (_h(c), c.se_hidden_size),
                aliases=(L + "se_block.fc2.weight", L + "squeeze_excitation.fc2.weight"), llama=False),
    TensorEntry(L + "se.fc2.bias", "blk.{bid}.se_fc2.bias", "se", "bias", lambda c: (_h(c),),
                aliases=(L + "se_block.fc2.bias", L + "squeeze_excitation.fc2.bias"), llama=False,
                sigmoid_bias=True),
    # head
    TensorEntry("model.norm.weight", "output_norm.weight", "final_norm", "norm", lambda c: (_h(c),)),
    TensorEntry("lm_head.weight", "output.weight", "lm_head", "matrix",
                lambda c: (c.vocab_size, c.hidden_size)),
)



def _entry(name: str) -> TensorEntry:
    return next(e for e in TABLE if e.name == name)


# The entries code refers to by role; every other use goes through lookup()/expected_tensors().
EMBEDDING = _entry("model.embed_tokens.weight")
LM_HEAD = _entry("lm_head.weight")
TOKEN_CONV = _entry(L + "token_mixing.conv.weight")
SE_FC1 = _entry(L + "se.fc1.weight")


@dataclass(frozen=True)
class TensorRef:
    """One concrete tensor of one model: an entry with its layer index filled in."""
    entry: TensorEntry
    bid: int | None

    @property
    def name(self) -> str:
        return self.entry.name.format(bid=self.bid)

    @property
    def gguf_name(self) -> str:
        return self.entry.gguf.format(bid=self.bid)

    @property
    def onnx_name(self) -> str:
        return self.name

    def shape(self, config: LiquidMetalConfig) -> tuple[int, ...]:
        return tuple(self.entry.shape(config))

    @property
    def where(self) -> str:
        """Human-readable place for localisation: 'layer 3 se' or 'lm_head'."""
        return f"layer {self.bid} {self.entry.module}" if self.bid is not None else self.entry.module


def expected_tensors(config: LiquidMetalConfig, llama_only: bool = False) -> list[TensorRef]:
    """Every tensor a model with this config has, in file order (tied head: no lm_head)."""
    def wanted(entry: TensorEntry) -> bool:
        if llama_only and not entry.llama:
            return False
        return not (entry.module == "lm_head" and config.tie_word_embeddings)

    globals_ = [e for e in TABLE if not e.per_layer and wanted(e)]
    head = [TensorRef(e, None) for e in globals_ if e.module == "embedding"]
    layers = [TensorRef(e, bid) for bid in range(config.num_hidden_layers)
              for e in TABLE if e.per_layer and wanted(e)]
    tail = [TensorRef(e, None) for e in globals_ if e.module != "embedding"]
    return head + layers + tail


def _template_regex(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(re.escape("{bid}"), r"(\d+)") + "$")


_CANONICAL = [(_template_regex(e.name), e) for e in TABLE]
_ALIASES = [(_template_regex(a), e) for e in TABLE for a in e.aliases]
_GGUF = [(_template_regex(e.gguf), e) for e in TABLE]


def _match(name: str, patterns) -> TensorRef | None:
    for pattern, entry in patterns:
        m = pattern.match(name)
        if m:
            return TensorRef(entry, int(m.group(1)) if m.groups() else None)
    return None


def lookup(name: str) -> TensorRef | None:
    """Map a checkpoint tensor name (canonical or alias) to its entry; None if unmapped."""
    return _match(name, _CANONICAL) or _match(name, _ALIASES)


def lookup_gguf(name: str) -> TensorRef | None:
    return _match(name, _GGUF)


def iter_aliases() -> Iterator[tuple[str, str]]:
    for e in TABLE:
        for a in e.aliases:
            yield a, e.name


# ---------------------------------------------------------------- packs (ONNX only)
# A pack is one ONNX initializer holding several matrices that read the same input,
# transposed ([in, out]) like every exported matrix and side by side along ``out`` in
# member order; the graph runs one MatMul over it and Splits the result
# (exporters/onnx/pack.py). Checkpoints and GGUF never hold packs.

@dataclass(frozen=True)
class Pack:
    name: str                           # ONNX initializer template, e.g. "model.layers.{bid}.self_attn.qkv_proj.weight"
    members: tuple[TensorEntry, ...]    # in column order; each role "matrix", all of one module and input

    @property
    def module(self) -> str:
        return self.members[0].module


PACKS: tuple[Pack, ...] = (
    Pack(L + "self_attn.qkv_proj.weight",
         tuple(_entry(L + f"self_attn.{p}_proj.weight") for p in "qkv")),
    Pack(L + "mlp.gate_up_proj.weight",
         (_entry(L + "mlp.gate_proj.weight"), _entry(L + "mlp.up_proj.weight"))),
)


@dataclass(frozen=True)
class PackRef:
    """One concrete pack of one layer."""
    pack: Pack
    bid: int

    @property
    def name(self) -> str:
        return self.pack.name.format(bid=self.bid)

    @property
    def members(self) -> list[TensorRef]:
        return [TensorRef(e, self.bid) for e in self.pack.members]

    def columns(self, config: LiquidMetalConfig) -> list[tuple[TensorRef, int, int]]:
        """(member, first, end) of each member's slice of the packed output axis."""
        out, start = [], 0
        for ref in self.members:
            width = ref.shape(config)[0]             # checkpoint [out, in]
            out.append((ref, start, start + width))
            start += width
        return out

    def shape(self, config: LiquidMetalConfig) -> tuple[int, int]:
        """The packed initializer's shape, [in, sum of the members' out]."""
        return self.members[0].shape(config)[1], self.columns(config)[-1][2]


_PACKS = [(_template_regex(p.name), p) for p in PACKS]


def lookup_pack(name: str) -> PackRef | None:
    """Map a packed ONNX initializer name to its pack and layer; None if it is none."""
    for pattern, pack in _PACKS:
        m = pattern.match(name)
        if m:
            return PackRef(pack, int(m.group(1)))
    return None


def pack_columns(ref: PackRef, members: list[np.ndarray]) -> np.ndarray:
    """The packed initializer from the members' stored ([in, out]) matrices, in member order."""
    if len(members) != len(ref.members) or len({m.shape[0] for m in members}) != 1:
        raise ValueError(f"{ref.name}: needs {len(ref.members)} matrices of one input size")
    return np.concatenate(members, axis=1)


def unpack_columns(ref: PackRef, packed: np.ndarray, config: LiquidMetalConfig) -> dict[str, np.ndarray]:
    """The inverse of ``pack_columns``: each member's stored [in, out] matrix, by name."""
    return {member.name: packed[:, start:end] for member, start, end in ref.columns(config)}


# ---------------------------------------------------------------- layout transforms
# A layout maps a tensor from its checkpoint form to the form one format stores;
# each has its inverse and the shape it produces, and tests check
# inverse(forward(x)) == x and forward(x).shape == shape(...) for every one.

def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order: HF's rotate-half halves become interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass(frozen=True)
class Layout:
    """A named, invertible layout transform. ``forward``/``inverse`` take the array
    and the model config; ``shape`` gives the stored shape from the checkpoint shape."""
    name: str
    forward: Callable[[np.ndarray, LiquidMetalConfig], np.ndarray]
    inverse: Callable[[np.ndarray, LiquidMetalConfig], np.ndarray]
    shape: Callable[[tuple[int, ...]], tuple[int, ...]] = lambda shape: shape


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout("rope_q",          # llama.cpp's Q permutation (n_head)
           lambda w, c: rope_permute(w, c.num_attention_heads),
           lambda w, c: rope_unpermute(w, c.num_attention_heads)),
    Layout("rope_k",          # the K permutation (n_head_kv)
           lambda w, c: rope_permute(w, c.num_key_value_heads),
           lambda w, c: rope_unpermute(w, c.num_key_value_heads)),
    Layout("conv_squeeze",    # [H, 1, K] -> [H, K], as llama.cpp stores LFM2's short convolution
           lambda w, c: w.reshape(w.shape[0], w.shape[-1]),
           lambda w, c: w.reshape(w.shape[0], 1, w.shape[-1]),
           lambda shape: (shape[0], shape[-1])),
)}


def gguf_layout(ref: TensorRef) -> Layout | None:
    return LAYOUTS[ref.entry.gguf_layout] if ref.entry.gguf_layout else None


def gguf_layout_shape(ref: TensorRef, config: LiquidMetalConfig) -> tuple[int, ...]:
    """The numpy shape a tensor has in GGUF (after ``to_gguf_layout``)."""
    layout = gguf_layout(ref)
    return layout.shape(ref.shape(config)) if layout else ref.shape(config)


def to_gguf_layout(ref: TensorRef, w: np.ndarray, config: LiquidMetalConfig) -> np.ndarray:
    layout = gguf_layout(ref)
    return layout.forward(w, config) if layout else w


def from_gguf_layout(ref: TensorRef, w: np.ndarray, config: LiquidMetalConfig) -> np.ndarray:
    layout = gguf_layout(ref)
    return layout.inverse(w, config) if layout else w
