"""Token ids against the model they are fed to: one check, where a tokenizer meets a model.

A tokenizer from another model (``--tokenizer``), or a folder whose tokenizer.json was
replaced, can produce ids past the model's embedding table; ONNX Runtime then fails in a
Gather and PyTorch with an IndexError. Torch-free and tokenizers-free.
"""
from __future__ import annotations

from typing import Sequence

from lmexport.errors import InputError


def check_ids_fit(ids: Sequence[int], vocab_size: int | None) -> None:
    """InputError naming the first id outside ``0..vocab_size-1``; nothing when all fit."""
    if not vocab_size or not len(ids):
        return
    top, low = max(ids), min(ids)
    if top >= vocab_size or low < 0:
        bad = top if top >= vocab_size else low
        raise InputError(f"the tokenizer gives token id {bad}, but the model has a vocabulary of {vocab_size} "
                         f"tokens (ids 0..{vocab_size - 1}): the tokenizer is not this model's",
                         hint="pass --tokenizer with the model's own tokenizer files")
