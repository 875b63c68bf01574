"""The folder's tokenizer for transformers' ``generate()``.

An exported folder's ``tokenizer.json`` states its BOS/EOS rule in its post-processor,
which transformers and lmexport's runtime both follow (``lmexport.runtime.tokenizer``),
so ids already agree. What ``AutoTokenizer`` does not give by default is what batched
decoder-only generation needs: padding on the left, with the folder's pad id, and only
``input_ids`` and ``attention_mask`` (no ``token_type_ids``).
"""
from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lmexport.manifest import Manifest


def load_tokenizer(folder: str | Path, **kwargs) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(folder, **kwargs)``; ``padding_side`` defaults to ``"left"``
    and ``model_input_names`` to input_ids and attention_mask; the pad token is lmexport.json's."""
    folder = Path(folder)
    manifest = Manifest.read(folder)
    kwargs.setdefault("padding_side", "left")
    kwargs.setdefault("model_input_names", ["input_ids", "attention_mask"])
    tok = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    pad = manifest.tokenizer.get("pad_token_id")
    if pad is not None and tok.pad_token_id != pad:
        tok.pad_token = tok.convert_ids_to_tokens(int(pad))
    return tok
