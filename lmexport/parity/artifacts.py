"""Open the artifact side of a parity run, after checking it came from this model.

A wrong-model artifact (its recorded weights hash or config differs from the
model folder's) is an input error, reported before any numbers.
"""
from __future__ import annotations

import logging
from pathlib import Path

from lmexport.modeling.checkpoint import Checkpoint
from lmexport.errors import ArtifactError
from lmexport.parity.backends import TorchBackend

log = logging.getLogger(__name__)
# Config fields that must agree between the model folder and the artifact.
IDENTITY_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                   "num_attention_heads", "num_key_value_heads", "token_mixing_kernel_size",
                   "se_reduction", "context_mode", "tie_word_embeddings")


def check_same_model(ckpt: Checkpoint, artifact: Path, weights_hash: str | None, config: dict | None) -> None:
    problems = []
    if config:
        for name in IDENTITY_FIELDS:
            if name in config and config[name] != getattr(ckpt.config, name):
                problems.append(f"{name} {config[name]!r} vs {getattr(ckpt.config, name)!r}")
    if weights_hash is None:
        log.warning("%s records no source weights hash; cannot confirm it came from %s", artifact, ckpt.path)
    elif weights_hash != ckpt.weights_hash():
        problems.append("source weights hash differs")
    if problems:
        raise ArtifactError(f"{artifact} was exported from a different model than {ckpt.path}: "
                            + "; ".join(problems), hint="pass the model folder it was exported from")


def open_gguf_backend(path: Path, ckpt: Checkpoint) -> tuple[TorchBackend, str]:
    from lmexport.exporters.gguf.format import ARCH_LIQUIDMETAL, OUTTYPE
    from lmexport.exporters.gguf.reader import load_gguf_model, open_gguf

    g = open_gguf(path)
    if g.arch != ARCH_LIQUIDMETAL:
        raise ArtifactError(f"{path} is a {g.arch!r} GGUF, not a Liquid-Metal ({ARCH_LIQUIDMETAL}) one",
                            hint="parity compares Liquid-Metal exports; export with lmexport gguf --arch auto")
    check_same_model(ckpt, path, g.weights_hash, g.source_config)
    model, _, _ = load_gguf_model(path)
    outtype = g.value(OUTTYPE) or "f32"
    return TorchBackend(model, name=f"gguf {outtype}"), f"gguf-{outtype}"


def open_artifact(kind: str, path: Path, ckpt: Checkpoint, device: str = "cpu"):
    """(backend, default tolerance preset) for an ONNX folder or a GGUF file."""
    if kind == "gguf":
        return open_gguf_backend(path, ckpt)
    from lmexport.parity.onnx_backend import open_onnx_backend
    return open_onnx_backend(path, ckpt, device)
