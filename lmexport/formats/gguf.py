"""What an lmexport GGUF file holds: architecture names, metadata keys, type rules, bounds.

The writer (``write.py``), the validator (``validate.py``)
and the reader (``reader.py``) all read this one module, so a key or a rule
is stated once. Standard keys come from ``gguf.Keys``; the Liquid-Metal ones
follow the same ``{arch}.`` pattern. Torch-free.

Type rules: tensors whose role (``tensor_names.TensorEntry.role``) is "norm",
"bias" or "conv" stay F32; "matrix" and "embedding" take the requested type. A
quantised type needs the row length (last numpy axis, ggml's ne0) to be a
multiple of its block size; otherwise the tensor falls back to F16.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT
from gguf import Keys, LlamaFileType

from lmexport.errors import ArtifactError

# The regex of Llama 3's tokenizer.json Split pre-tokenizer (data, as written in those files).
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

ARCH_LIQUIDMETAL = "liquidmetal"
ARCH_LLAMA = "llama"
ARCHS = (ARCH_LIQUIDMETAL, ARCH_LLAMA)
F32_ROLES = ("norm", "bias", "conv")
MAX_NAME_BYTES = 63          # GGML_MAX_NAME is 64 with the terminating NUL
MAX_DIMS = 4                 # GGML_MAX_DIMS

# lmexport's own keys, outside any architecture.
WEIGHTS_HASH = "lmexport.source.weights_hash"
SOURCE_CONFIG = "lmexport.source.config"        # the source config.json, as JSON text
LMEXPORT_VERSION = "lmexport.version"
OUTTYPE = "lmexport.outtype"

# Liquid-Metal keys (templates like gguf.Keys.LLM.*). The patched llama.cpp spells them with "%s"
# for the architecture (``native_key``), which is how the llama.cpp engine recognises a patched build.
KERNEL_SIZE = "{arch}.token_mixing.kernel_size"
SE_HIDDEN_SIZE = "{arch}.se.hidden_size"
SE_REDUCTION = "{arch}.se.reduction"
CONTEXT_MODE = "{arch}.context_mode"
ADAPTIVE_NORM_EPS = "{arch}.adaptive_norm.layer_norm_rms_epsilon"


def native_key(template: str) -> bytes:
    """A key template as llama.cpp's C source writes it (``LLM_KV_NAMES``: "%s.token_mixing.kernel_size")."""
    return template.format(arch="%s").encode("ascii")


@dataclass(frozen=True)
class ConfigKey:
    """One architecture metadata key and the LiquidMetalConfig attribute it holds."""
    template: str
    vtype: VT
    field: str
    liquidmetal_only: bool = False
    derived: bool = False     # written and checked, but not a constructor argument

    def key(self, arch: str) -> str:
        return self.template.format(arch=arch)


CONFIG_KEYS: tuple[ConfigKey, ...] = (
    ConfigKey(Keys.LLM.VOCAB_SIZE, VT.UINT32, "vocab_size"),
    ConfigKey(Keys.LLM.CONTEXT_LENGTH, VT.UINT32, "max_position_embeddings"),
    ConfigKey(Keys.LLM.EMBEDDING_LENGTH, VT.UINT32, "hidden_size"),
    ConfigKey(Keys.LLM.BLOCK_COUNT, VT.UINT32, "num_hidden_layers"),
    ConfigKey(Keys.LLM.FEED_FORWARD_LENGTH, VT.UINT32, "intermediate_size"),
    ConfigKey(Keys.Attention.HEAD_COUNT, VT.UINT32, "num_attention_heads"),
    ConfigKey(Keys.Attention.HEAD_COUNT_KV, VT.UINT32, "num_key_value_heads"),
    ConfigKey(Keys.Attention.KEY_LENGTH, VT.UINT32, "head_dim"),
    ConfigKey(Keys.Attention.VALUE_LENGTH, VT.UINT32, "head_dim", derived=True),
    ConfigKey(Keys.Rope.DIMENSION_COUNT, VT.UINT32, "head_dim", derived=True),
    ConfigKey(Keys.Rope.FREQ_BASE, VT.FLOAT32, "rope_theta"),
    ConfigKey(Keys.Attention.LAYERNORM_RMS_EPS, VT.FLOAT32, "rms_norm_eps"),
    ConfigKey(KERNEL_SIZE, VT.UINT32, "token_mixing_kernel_size", liquidmetal_only=True),
    ConfigKey(SE_REDUCTION, VT.UINT32, "se_reduction", liquidmetal_only=True),
    ConfigKey(SE_HIDDEN_SIZE, VT.UINT32, "se_hidden_size", liquidmetal_only=True, derived=True),
    ConfigKey(CONTEXT_MODE, VT.STRING, "context_mode", liquidmetal_only=True),
    ConfigKey(ADAPTIVE_NORM_EPS, VT.FLOAT32, "adaptive_norm_eps", liquidmetal_only=True),
)


def config_keys(arch: str) -> tuple[ConfigKey, ...]:
    return tuple(k for k in CONFIG_KEYS if arch == ARCH_LIQUIDMETAL or not k.liquidmetal_only)


# Keys every lmexport GGUF has, with their value type (arrays: element type).
GENERAL_KEYS: dict[str, VT] = {
    Keys.General.ARCHITECTURE: VT.STRING,
    Keys.General.NAME: VT.STRING,
    Keys.General.FILE_TYPE: VT.UINT32,
    Keys.General.QUANTIZATION_VERSION: VT.UINT32,
    WEIGHTS_HASH: VT.STRING,
    SOURCE_CONFIG: VT.STRING,
    LMEXPORT_VERSION: VT.STRING,
    OUTTYPE: VT.STRING,
    Keys.Tokenizer.MODEL: VT.STRING,
    Keys.Tokenizer.LIST: VT.ARRAY,
    Keys.Tokenizer.TOKEN_TYPE: VT.ARRAY,
}
TOKENIZER_ARRAY_TYPES: dict[str, VT] = {
    Keys.Tokenizer.LIST: VT.STRING,
    Keys.Tokenizer.TOKEN_TYPE: VT.INT32,
    Keys.Tokenizer.SCORES: VT.FLOAT32,
    Keys.Tokenizer.MERGES: VT.STRING,
}
# Optional tokenizer keys, with their types when present.
TOKENIZER_ID_KEYS = {"bos": Keys.Tokenizer.BOS_ID, "eos": Keys.Tokenizer.EOS_ID,
                     "unk": Keys.Tokenizer.UNK_ID, "pad": Keys.Tokenizer.PAD_ID}
TOKENIZER_OPTIONAL_TYPES: dict[str, VT] = {
    **{key: VT.UINT32 for key in TOKENIZER_ID_KEYS.values()},
    Keys.Tokenizer.ADD_BOS: VT.BOOL, Keys.Tokenizer.ADD_EOS: VT.BOOL,
    Keys.Tokenizer.CHAT_TEMPLATE: VT.STRING, Keys.Tokenizer.PRE: VT.STRING, Keys.Tokenizer.ADD_PREFIX: VT.BOOL,
    Keys.Tokenizer.SCORES: VT.ARRAY, Keys.Tokenizer.MERGES: VT.ARRAY,
}


@dataclass(frozen=True)
class OutType:
    name: str
    qtype: QT                  # type of "matrix"/"embedding" tensors
    file_type: LlamaFileType   # general.file_type


OUTTYPES: dict[str, OutType] = {o.name: o for o in (
    OutType("f32", QT.F32, LlamaFileType.ALL_F32),
    OutType("f16", QT.F16, LlamaFileType.MOSTLY_F16),
    OutType("bf16", QT.BF16, LlamaFileType.MOSTLY_BF16),
    OutType("q8_0", QT.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    OutType("q4_0", QT.Q4_0, LlamaFileType.MOSTLY_Q4_0),
    OutType("q4_1", QT.Q4_1, LlamaFileType.MOSTLY_Q4_1),
    OutType("q5_0", QT.Q5_0, LlamaFileType.MOSTLY_Q5_0),
    OutType("q5_1", QT.Q5_1, LlamaFileType.MOSTLY_Q5_1),
)}
FALLBACK_TYPE = QT.F16

# llama.cpp's K-quant mixes (``lmexport gguf --outtype q4_k_m``): made by llama.cpp's own quantizer
# from an f32 file lmexport wrote (runtime/llamacpp/quantize.py). llama.cpp picks a type per tensor
# and rewrites general.file_type; lmexport.outtype keeps the source's ("f32"), so a file's outtype is
# read with ``file_outtype``.
KQUANTS: dict[str, LlamaFileType] = {
    "q4_k_m": LlamaFileType.MOSTLY_Q4_K_M,
    "q5_k_m": LlamaFileType.MOSTLY_Q5_K_M,
    "q6_k": LlamaFileType.MOSTLY_Q6_K,
}
KQUANT_SOURCE = "f32"
# the types llama.cpp may pick for a matrix of a K-quant mix (rows not a multiple of 256 fall back)
KQUANT_TYPES = (QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q8_0, QT.Q5_0, QT.Q5_1, QT.Q4_0, QT.Q4_1, QT.F16, QT.F32)

# Weight round-trip bounds: after dequantisation, max |w' - w| <= bound * max |w| + ABS_FLOOR
# over one tensor. Derived from each format's step (and the f16 rounding of its scales):
# f16 rounds to 2^-11 relative (10 fraction bits), bf16 to 2^-8 (7 fraction bits); q8_0 errs by at most d/2 = amax/254;
# q4_0/q5_0 map the signed extreme to -8/-16 steps, so the other extreme can be off by one
# step d = amax/8 (amax/16); q4_1/q5_1 err by half a step of (max-min)/15 (/31) <= amax/15 (/31).
WEIGHT_BOUNDS: dict[QT, float] = {
    QT.F32: 0.0,
    QT.F16: 5e-4,
    QT.BF16: 4e-3,
    QT.Q8_0: 5e-3,
    QT.Q5_1: 3.5e-2,
    QT.Q5_0: 6.6e-2,
    QT.Q4_1: 7e-2,
    QT.Q4_0: 1.3e-1,
    # K-quants: 6/5/4-bit steps with 6-bit (Q4_K/Q5_K) or 8-bit (Q6_K) sub-block scales; bounded like
    # the legacy type of the same width, plus the sub-block scale rounding
    QT.Q6_K: 2e-2,
    QT.Q5_K: 6.6e-2,
    QT.Q4_K: 1.3e-1,
}
ABS_FLOOR = 1e-7   # f16 subnormals

# Sanity bounds checked before anything is allocated from a file's numbers.
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 16
MAX_LAYERS = 1024
MAX_DIM = 1 << 20
MAX_VOCAB = 1 << 22
MAX_SHARDS = 9999


def file_outtype(file_type, recorded: str | None) -> str:
    """The outtype of a file: its K-quant mix when llama.cpp quantized it, else lmexport.outtype."""
    for name, ftype in KQUANTS.items():
        if file_type is not None and int(file_type) == int(ftype):
            return name
    return recorded or "f32"


def block_size(qtype: QT) -> int:
    return gguf.GGML_QUANT_SIZES[qtype][0]


def type_fits(shape: tuple[int, ...], qtype: QT) -> bool:
    """Can a tensor of this numpy shape be stored as ``qtype``?"""
    if not 1 <= len(shape) <= MAX_DIMS or any(d <= 0 for d in shape):
        return False
    return shape[-1] % block_size(qtype) == 0


def tensor_nbytes(shape: tuple[int, ...], qtype: QT) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= d
    return n // block * type_size


def candidate_types(role: str, outtype: OutType) -> tuple[QT, ...]:
    """Types to try for a tensor of this role, best first."""
    if role in F32_ROLES or outtype.qtype == QT.F32:
        return (QT.F32,)
    if outtype.qtype in (QT.F16, QT.BF16):
        return (outtype.qtype,)
    return (outtype.qtype, FALLBACK_TYPE)


def choose_type(shape: tuple[int, ...], role: str, outtype: OutType) -> QT | None:
    """The type a tensor of this numpy shape and role gets; None if no candidate fits."""
    for qtype in candidate_types(role, outtype):
        if type_fits(shape, qtype):
            return qtype
    return None


GGUF_MAGIC = 0x46554747          # b"GGUF" little-endian
_HEADER = np.dtype([("magic", "<u4"), ("version", "<u4"), ("n_tensors", "<u8"), ("n_kv", "<u8")])
# what gguf.GGUFReader raises on a damaged file that passed check_header
READ_ERRORS = (ValueError, IndexError, KeyError, OSError, UnicodeDecodeError, OverflowError)


def check_header(path: Path) -> None:
    """Refuse a file whose header is not GGUF or whose counts are out of range, before anything parses it."""
    if path.stat().st_size < _HEADER.itemsize:
        raise ArtifactError(f"{path} is too short to be a GGUF file")
    header = np.fromfile(path, dtype=_HEADER, count=1)[0]
    if int(header["magic"]) != GGUF_MAGIC:
        raise ArtifactError(f"{path} is not a GGUF file (bad magic)")
    if int(header["version"]) not in (2, 3):
        raise ArtifactError(f"{path} has GGUF version {int(header['version'])}; lmexport reads versions 2 and 3")
    if int(header["n_tensors"]) > MAX_TENSORS or int(header["n_kv"]) > MAX_KV:
        raise ArtifactError(f"{path} claims {int(header['n_tensors'])} tensors and {int(header['n_kv'])} "
                            f"metadata keys, beyond lmexport's limits; the file is damaged")


def architecture_and_context(path: Path) -> tuple[str, int | None]:
    """(general.architecture, {arch}.context_length) of a GGUF file, read from its metadata alone."""
    check_header(path)
    try:
        reader = gguf.GGUFReader(path)
    except READ_ERRORS as exc:
        raise ArtifactError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None

    def value(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = str(value(Keys.General.ARCHITECTURE) or "")
    n_ctx = value(f"{arch}.context_length")
    return arch, int(n_ctx) if isinstance(n_ctx, (int, np.integer)) else None
