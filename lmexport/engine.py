"""The one engine protocol, the one rule that says what an artifact is, and ``open_artifact``.

An *engine* runs one artifact call by call with its state kept inside it (the way an
exported graph is driven): ``reset(batch)`` clears the state, ``step(ids, mask, positions)``
runs one call (a prefill or a decode step) and returns the logits, the state carried to
the next call. Everything that runs a model -- ``generate``, ``chat``, ``parity``,
``perplexity``, ``bench`` and the exporters' validation -- is written once against this
protocol (``lmexport.runtime.generator`` for text, ``lmexport.compare`` for numbers).

Engines, each beside the thing it runs:

======================  ==========  ======================================================
kind (``artifact_kind``)  engine      class
======================  ==========  ======================================================
``onnx``                onnxruntime ``lmexport.runtime.ort.OnnxEngine``
``gguf``                llama.cpp   ``lmexport.runtime.llamacpp.engine.LlamaCppEngine``
``gguf``                pytorch     ``lmexport.exporters.gguf.reader.torch_engine`` (rebuild)
``pytorch``             pytorch     ``lmexport.modeling.engine.TorchEngine``
``pte``                 executorch  ``exporters/executorch/engine.py`` (executorch.runtime)
======================  ==========  ======================================================

Adding an engine: one module with a class (or factory) implementing ``Engine`` (subclass
``EngineBase`` for the defaults), plus one ``register(kind, name, "module:Class")`` line in
``ENGINES`` below (and, for a new kind of file, one line in ``artifact_kind``). See
docs/DESIGN.md, "Adding an engine".

This module is torch-free (stdlib and numpy): the registry names engines by module path
and imports the one asked for, so ``lmexport generate model.gguf`` never imports torch or
onnxruntime.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from lmexport.errors import InputError

MANIFEST_FILE = "lmexport.json"        # an exported ONNX folder (lmexport.manifest reads it)
GGUF_MAGIC = b"GGUF"
PTE_SUFFIX = ".pte"                    # an ExecuTorch program
KINDS = ("onnx", "gguf", "pytorch", "pte")


# ---------------------------------------------------------------- what an artifact is
def artifact_kind(path: str | Path) -> str:
    """The kind of ``path``, by one rule:

    * a folder with ``lmexport.json`` or an ``*.onnx`` file: ``onnx`` (an exported ONNX folder; its
      engine says what is missing from a damaged one);
    * another folder with ``config.json``: ``pytorch`` (a Liquid-Metal model folder);
    * a file starting with the GGUF magic: ``gguf``;
    * a file named ``*.pte``: ``pte`` (ExecuTorch).

    Anything else is an InputError (exit 2) that says what was found."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist",
                         hint="pass an exported ONNX folder, a GGUF file or a model folder")
    if path.is_dir():
        if (path / MANIFEST_FILE).is_file() or any(path.glob("*.onnx")):
            return "onnx"
        if (path / "config.json").is_file():
            return "pytorch"
        raise InputError(f"{path} holds neither {MANIFEST_FILE} nor config.json: it is neither an exported ONNX "
                         "folder nor a model folder", hint="pass an exported ONNX folder, a GGUF file or a model folder")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise InputError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if magic == GGUF_MAGIC:
        return "gguf"
    if path.suffix == PTE_SUFFIX:
        return "pte"
    raise InputError(f"{path} is neither an exported ONNX folder nor a GGUF file (its first bytes are {magic!r})",
                     hint="pass an exported ONNX folder, a GGUF file or a model folder")


# ---------------------------------------------------------------- what an engine offers
@dataclass(frozen=True)
class EngineInfo:
    """What a consumer needs to know about an opened artifact, whatever runs it."""
    kind: str                          # "onnx", "gguf", "pytorch", "pte"
    engine: str                        # "onnxruntime", "llama.cpp", "pytorch", ...
    variant: str                       # "fp32", "int4", "q4_k_m", ...
    device: str                        # where it runs: "cpu", "cuda", ...
    context_length: int
    vocab_size: int
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    tolerance: str | None = None       # the tolerance preset its precision is held to (lmexport.compare)
    versions: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> ids as an engine's artifact defines them (the generation loop and chat use these)."""
    chat_template: str | None
    eos_token_ids: Any
    pad_token_id: int | None

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def token_text(self, token_id: int) -> str: ...
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str: ...


@runtime_checkable
class Engine(Protocol):
    """One artifact, run call by call; the state lives inside the engine."""
    path: Path
    info: EngineInfo

    def reset(self, batch: int) -> None:
        """Forget the state; the next ``step`` starts ``batch`` fresh sequences."""

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """One call: ``ids`` [B, T] (int64; left-padded), ``mask`` [B, past + T] (1 = a real token, over the
        past and this call), ``positions`` [B, T]. Returns float32 logits [B, T, V] on the host and keeps the
        state for the next call. Rows are padded on the left; logits at padded positions are not read."""

    @property
    def tokenizer(self) -> Tokenizer:
        """The artifact's tokenizer (an ArtifactError when it has none)."""

    @property
    def has_probes(self) -> bool:
        """Whether ``intermediates`` gives per-layer module outputs."""

    def intermediates(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
        """A fresh prefill's per-layer module outputs, "layers.N.<module>" -> [B, T, H] (parity's
        localisation); {} where the engine has no probes."""

    def close(self) -> None: ...


class EngineBase:
    """Defaults for an engine: no probes, no tokenizer, nothing to close, a context manager."""
    path: Path
    info: EngineInfo

    @property
    def tokenizer(self) -> Tokenizer:
        from lmexport.errors import ArtifactError
        raise ArtifactError(f"{self.path} has no tokenizer ({self.info.engine} engine)",
                            hint="export it with its tokenizer files")

    @property
    def has_probes(self) -> bool:
        return False

    def intermediates(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- the one response type
@dataclass
class Stats:
    """What a generation cost; the same ``--stats`` line on every engine (``line``)."""
    prompt_tokens: int = 0
    new_tokens: int = 0
    decode_tokens: int = 0               # tokens produced by decode calls (not by the prefill)
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    def line(self, engine: str, device: str) -> str:
        return (f"[{self.prompt_tokens} prompt tokens, {self.new_tokens} new tokens; prefill "
                f"{self.prefill_s * 1e3:.1f} ms; decode {self.decode_tokens_per_s:.1f} tokens/s on {device} "
                f"({engine})]")


@dataclass(frozen=True)
class Response:
    """One piece of streamed output (mlx-lm's GenerationResponse): what the CLI, chat, server and
    benchmark print from. ``index``: which prompt of a batch; ``text``: the newly released text;
    ``finish_reason``: None while the row runs, then "eos", "stop" or "length"."""
    index: int
    text: str
    finish_reason: str | None = None


# ---------------------------------------------------------------- the registry
# kind -> {engine name: "module:Class"}; the first name of a kind is its default engine.
ENGINES: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str, target: str) -> None:
    """Make ``target`` ("module:Class", imported only when opened) the engine ``name`` for ``kind``."""
    ENGINES.setdefault(kind, {})[name] = target


register("onnx", "onnxruntime", "lmexport.runtime.ort:OnnxEngine")
register("gguf", "llama.cpp", "lmexport.runtime.llamacpp.engine:LlamaCppEngine")
register("gguf", "pytorch", "lmexport.exporters.gguf.reader:torch_engine")
register("pytorch", "pytorch", "lmexport.modeling.engine:TorchEngine")
register("pte", "executorch", "lmexport.exporters.executorch.engine:ExecutorchEngine")


def engine_names(kind: str) -> list[str]:
    return list(ENGINES.get(kind, {}))


def engine_class(kind: str, engine: str | None = None):
    """The class of ``engine`` (default: the kind's first) for ``kind``; InputError if there is none."""
    names = ENGINES.get(kind) or {}
    if not names:
        raise InputError(f"no engine in this lmexport runs {kind} artifacts",
                         hint="install the package of an engine for it")
    name = engine or next(iter(names))
    if name not in names:
        raise InputError(f"the {name} engine does not run {kind} artifacts",
                         hint=f"for {kind}: " + ", ".join(names))
    module, _, attr = names[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def open_artifact(path: str | Path, *, engine: str | None = None, **options) -> Engine:
    """Open ``path`` (an ONNX folder, a GGUF file, a model folder, ...) in its engine.

    ``engine`` picks one of the kind's engines (``ENGINES``; default: the first); ``options`` go to
    its constructor. Every engine class takes ``(path, *, device="cpu", threads=None)`` and may take
    more keywords of its own (llama.cpp: ``n_ctx``, ``f32_kv``; onnxruntime: ``optimization``)."""
    kind = artifact_kind(path)
    return engine_class(kind, engine)(Path(path), **options)


def last_logits(engine: Engine, token_rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Convenience: reset, prefill equal-length rows, logits of the last position [B, V]."""
    ids = np.asarray(token_rows, dtype=np.int64)
    mask = np.ones_like(ids)
    positions = np.tile(np.arange(ids.shape[1], dtype=np.int64), (ids.shape[0], 1))
    engine.reset(ids.shape[0])
    return engine.step(ids, mask, positions)[:, -1]
