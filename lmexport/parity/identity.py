"""Is an artifact from this model? Its recorded weights hash and config against the folder's.

A wrong-model artifact is an input error, reported before anything heavy is loaded
and before any numbers.
"""
from __future__ import annotations

import logging
from pathlib import Path

from lmexport.errors import ArtifactError
from lmexport.modeling.checkpoint import Checkpoint

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
