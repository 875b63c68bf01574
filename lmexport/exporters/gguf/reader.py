"""Read an lmexport GGUF file (one file or split shards) back into a Liquid-Metal model.

This is the GGUF side of ``lmexport parity`` and ``lmexport perplexity``, and what the
GGUF validator reads with. Everything goes through ``gguf.GGUFReader``:

1. the header counts of every shard are checked against sanity bounds before the
   reader parses anything;
2. the architecture and the config numbers are read and range-checked, and the
   tensor set and every shape compared with what the config implies, before a
   single tensor is dequantised;
3. tensors are dequantised one at a time (``gguf.quants.dequantize``) and brought
   back to the checkpoint layout with ``tensor_names.from_gguf_layout``.

API::

    gguf = open_gguf(path)                      # GGUFFile: metadata, config, tensors
    config = gguf.config()
    for ref, array in gguf.iter_tensors():      # canonical name = ref.name, float32
        ...
    tensors = read_gguf_tensors(path)           # (config, {canonical name: np.ndarray})
    model, config, metadata = load_gguf_model(path)

``path`` is a single ``.gguf`` file, any shard of a split file
(``model-00001-of-00003.gguf``), or the unsplit name (``model.gguf``) whose shards exist.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from gguf import GGUFReader, GGUFValueType, Keys
from gguf.gguf_reader import ReaderField, ReaderTensor
from gguf.quants import dequantize

from lmexport.formats import gguf as fmt
from lmexport.errors import ArtifactError, ConfigError
from lmexport.config import MODEL_TYPE, LiquidMetalConfig
from lmexport.tensor_names import (EMBEDDING, LM_HEAD, TensorRef, expected_tensors, from_gguf_layout, gguf_layout_shape)

_SHARD = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def gguf_shards(path: str | Path) -> list[Path]:
    """Every file of the GGUF model at ``path``, first shard first."""
    path = Path(path)
    m = _SHARD.match(path.name)
    if m:
        stem, count = m.group("stem"), int(m.group("count"))
    elif path.is_file():
        return [path]
    else:
        found = sorted(path.parent.glob(f"{path.stem}-00001-of-*.gguf"))
        if not found:
            raise ArtifactError(f"GGUF file {path} does not exist")
        stem, count = path.stem, int(_SHARD.match(found[0].name).group("count"))
    if not 1 <= count <= fmt.MAX_SHARDS:
        raise ArtifactError(f"{path.name} names {count} shards")
    shards = [path.parent / f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise ArtifactError(f"split GGUF {stem} is incomplete: missing {', '.join(missing)}")
    return shards


def _field_value(f: ReaderField) -> Any:
    return f.contents()


@dataclass
class GGUFFile:
    """An open GGUF model: metadata from the first shard, tensors from all of them."""
    paths: list[Path]
    fields: dict[str, ReaderField] = field(repr=False)
    tensors: dict[str, ReaderTensor] = field(repr=False)   # GGUF name -> tensor

    # ------------------------------------------------------------ metadata
    @property
    def arch(self) -> str:
        return str(self.value(Keys.General.ARCHITECTURE, ""))

    def value(self, key: str, default: Any = None) -> Any:
        f = self.fields.get(key)
        return default if f is None else _field_value(f)

    def types(self, key: str) -> tuple[GGUFValueType, ...] | None:
        f = self.fields.get(key)
        return None if f is None else tuple(f.types)

    def metadata(self) -> dict[str, Any]:
        """Every metadata key and its value (arrays as lists)."""
        return {k: _field_value(f) for k, f in self.fields.items() if not k.startswith("GGUF.")}

    @property
    def weights_hash(self) -> str | None:
        return self.value(fmt.WEIGHTS_HASH)

    @property
    def source_config(self) -> dict | None:
        text = self.value(fmt.SOURCE_CONFIG)
        try:
            return json.loads(text) if text else None
        except json.JSONDecodeError:
            return None

    def config(self) -> LiquidMetalConfig:
        """The model config the metadata describes, range-checked (ArtifactError lists every problem)."""
        arch = self.arch
        if arch not in fmt.ARCHS:
            raise ArtifactError(f"{self.paths[0]} is a {arch or 'unnamed'!r} GGUF, not a Liquid-Metal "
                                f"({fmt.ARCH_LIQUIDMETAL}) or llama one")
        problems: list[str] = []
        kwargs: dict[str, Any] = {}
        for ck in fmt.config_keys(arch):
            key = ck.key(arch)
            value = self.value(key)
            if value is None:
                if ck.field == "head_dim" or ck.derived or ck.field in ("max_position_embeddings", "vocab_size"):
                    continue            # optional in files from other writers; checked below
                problems.append(f"missing {key}")
                continue
            if ck.vtype == GGUFValueType.UINT32:
                limit = {"num_hidden_layers": fmt.MAX_LAYERS, "vocab_size": fmt.MAX_VOCAB}.get(ck.field, fmt.MAX_DIM)
                if not isinstance(value, int) or not 0 < value <= limit:
                    problems.append(f"{key}={value!r} is out of range (1..{limit})")
                    continue
            if ck.vtype == GGUFValueType.FLOAT32 and isinstance(value, float):
                value = float(str(np.float32(value)))     # 1e-05, not 9.99999974e-06
            if not ck.derived:
                kwargs[ck.field] = value
        if "head_dim" not in kwargs and self.value(Keys.Rope.DIMENSION_COUNT.format(arch=arch)) is not None:
            kwargs["head_dim"] = self.value(Keys.Rope.DIMENSION_COUNT.format(arch=arch))
        tokens = self.fields.get(Keys.Tokenizer.LIST)
        if "vocab_size" not in kwargs:
            embd = self.tensors.get(EMBEDDING.gguf)
            if embd is None:
                problems.append(f"no vocab_size key and no {EMBEDDING.gguf}")
            else:
                kwargs["vocab_size"] = int(embd.shape[1])
        elif tokens is not None and len(tokens.data) > kwargs["vocab_size"]:
            problems.append(f"{len(tokens.data)} tokens for a vocab_size of {kwargs['vocab_size']}")
        if problems:
            raise ArtifactError(f"{self.paths[0]} has unusable metadata: " + "; ".join(problems))
        for typ, key in fmt.TOKENIZER_ID_KEYS.items():
            if typ != "unk" and self.value(key) is not None:
                kwargs[f"{typ}_token_id"] = int(self.value(key))
        kwargs["tie_word_embeddings"] = LM_HEAD.gguf not in self.tensors
        kwargs["model_type"] = MODEL_TYPE if arch == fmt.ARCH_LIQUIDMETAL else "llama"
        try:
            config = LiquidMetalConfig(**kwargs)
        except (ConfigError, TypeError) as exc:   # TypeError: a value of the wrong GGUF type
            raise ArtifactError(f"{self.paths[0]} describes an unsupported model: {exc}") from exc
        se_key = fmt.SE_HIDDEN_SIZE.format(arch=arch)
        if arch == fmt.ARCH_LIQUIDMETAL and self.value(se_key) != config.se_hidden_size:
            raise ArtifactError(f"{se_key}={self.value(se_key)} disagrees with hidden_size // se_reduction "
                                f"= {config.se_hidden_size}")
        return config

    # ------------------------------------------------------------ tensors
    def expected(self, config: LiquidMetalConfig) -> list[TensorRef]:
        return expected_tensors(config, llama_only=self.arch == fmt.ARCH_LLAMA)

    def tensor_problems(self, config: LiquidMetalConfig) -> list[str]:
        """Missing, extra and mis-shaped tensors; nothing is dequantised."""
        problems = []
        expected = {r.gguf_name: r for r in self.expected(config)}
        for name in expected.keys() - self.tensors.keys():
            problems.append(f"missing tensor {name}")
        for name in self.tensors.keys() - expected.keys():
            problems.append(f"unexpected tensor {name}")
        for name, ref in expected.items():
            t = self.tensors.get(name)
            if t is not None:
                shape = tuple(int(d) for d in reversed(t.shape.tolist()))
                want = gguf_layout_shape(ref, config)
                if shape != want:
                    problems.append(f"{name} has shape {shape}, the config implies {want}")
        return sorted(problems)

    def check_tensors(self, config: LiquidMetalConfig) -> None:
        problems = self.tensor_problems(config)
        if problems:
            shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
            raise ArtifactError(f"{self.paths[0]} does not hold the tensors its metadata describes: {shown}")

    def dequantize(self, gguf_name: str) -> np.ndarray:
        """One tensor as float32, in its GGUF layout (numpy order)."""
        t = self.tensors[gguf_name]
        try:
            out = dequantize(t.data, t.tensor_type)
        except NotImplementedError as exc:
            raise ArtifactError(f"{gguf_name} has type {t.tensor_type.name}, which lmexport cannot "
                                f"dequantise") from exc
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        return np.asarray(out, dtype=np.float32).reshape(shape)

    def canonical(self, ref: TensorRef, config: LiquidMetalConfig) -> np.ndarray:
        """One tensor as float32 in the checkpoint layout (layout transforms undone)."""
        return np.ascontiguousarray(from_gguf_layout(ref, self.dequantize(ref.gguf_name), config))

    def iter_tensors(self, config: LiquidMetalConfig | None = None) -> Iterator[tuple[TensorRef, np.ndarray]]:
        """(ref, canonical float32 array) for every tensor, one at a time; checks the set first."""
        config = config or self.config()
        self.check_tensors(config)
        for ref in self.expected(config):
            yield ref, self.canonical(ref, config)


def open_gguf(path: str | Path) -> GGUFFile:
    """Open a GGUF model (all shards), checking headers and split keys; nothing is dequantised."""
    paths = gguf_shards(path)
    fields: dict[str, ReaderField] = {}
    tensors: dict[str, ReaderTensor] = {}
    for i, shard in enumerate(paths):
        fmt.check_header(shard)
        try:
            reader = GGUFReader(shard)
        except fmt.READ_ERRORS as exc:
            raise ArtifactError(f"{shard} is not a readable GGUF file ({type(exc).__name__}: {exc})") from exc
        if i == 0:
            fields = dict(reader.fields)
        split_no = reader.fields.get(Keys.Split.LLM_KV_SPLIT_NO)
        if len(paths) > 1 and (split_no is None or split_no.contents() != i):
            raise ArtifactError(f"{shard.name} is not shard {i + 1} of its split GGUF (split.no mismatch)")
        for t in reader.tensors:
            if t.name in tensors:
                raise ArtifactError(f"tensor {t.name} appears twice in {path}")
            tensors[t.name] = t
    if len(paths) > 1:
        count = fields.get(Keys.Split.LLM_KV_SPLIT_COUNT)
        total = fields.get(Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT)
        if count is None or count.contents() != len(paths):
            raise ArtifactError(f"{paths[0].name}: split.count does not match the {len(paths)} shards found")
        if total is not None and total.contents() != len(tensors):
            raise ArtifactError(f"{paths[0].name}: split.tensors.count={total.contents()} but the shards "
                                f"hold {len(tensors)} tensors")
    return GGUFFile(paths, fields, tensors)


def read_gguf_tensors(path: str | Path) -> tuple[LiquidMetalConfig, dict[str, np.ndarray]]:
    """The config and every tensor (canonical name -> float32 array, checkpoint layout)."""
    g = open_gguf(path)
    config = g.config()
    return config, {ref.name: array for ref, array in g.iter_tensors(config)}


def load_gguf_model(path: str | Path, dtype=None):
    """Rebuild ``LiquidMetalForCausalLM`` from a liquidmetal GGUF: returns (model, config, metadata)."""
    import torch

    from lmexport.modeling.checkpoint import build_model

    g = open_gguf(path)
    if g.arch != fmt.ARCH_LIQUIDMETAL:
        raise ArtifactError(f"{g.paths[0]} is a {g.arch!r} GGUF without the Liquid-Metal modules",
                            hint="load llama GGUFs with transformers (gguf_file=...) or llama.cpp")
    config = g.config()
    tensors = {ref.name: torch.tensor(array) for ref, array in g.iter_tensors(config)}
    model = build_model(config, tensors, dtype or torch.float32)
    return model, config, g.metadata()


def torch_engine(path: str | Path, *, device: str = "cpu", threads: int | None = None):
    """A liquidmetal GGUF's tensors (dequantised) rebuilt into the PyTorch model, as an engine
    (``lmexport.engine``: the ``pytorch`` engine of kind ``gguf``): what ``parity`` and ``perplexity``
    compare a GGUF with by default, and where a llama.cpp run's per-layer outputs come from."""
    from dataclasses import replace

    from lmexport.compare.tolerances import gguf_preset
    from lmexport.modeling.engine import TorchEngine

    g = open_gguf(path)
    model, _, _ = load_gguf_model(path)
    outtype = fmt.file_outtype(g.value(Keys.General.FILE_TYPE), g.value(fmt.OUTTYPE))
    engine = TorchEngine(path, device=device, threads=threads, model=model, kind="gguf", variant=outtype)
    engine.info = replace(engine.info, engine="pytorch rebuild of the GGUF", tolerance=gguf_preset(outtype))
    return engine
