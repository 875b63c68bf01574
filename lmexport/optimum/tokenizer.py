"""The folder's tokenizer for transformers, encoding as lmexport's runtime does.

``AutoTokenizer`` loads ``tokenizer.json`` as a generic ``PreTrainedTokenizerFast``,
which ignores ``add_bos_token`` in tokenizer_config.json (only the Llama tokenizer
class reads it) and pads on the right. ``load_tokenizer`` sets it up so that
``tok(prompts, padding=True)`` gives what ``lmexport generate`` feeds: BOS first when
the folder asks for it, left padding with the folder's pad id, and only
``input_ids`` and ``attention_mask``.
"""
from __future__ import annotations

from pathlib import Path

from tokenizers import processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lmexport.manifest import Manifest
from lmexport.runtime.tokenizer import TextTokenizer


def load_tokenizer(folder: str | Path, **kwargs) -> PreTrainedTokenizerFast:
    """``AutoTokenizer.from_pretrained(folder)`` with lmexport's encoding; ``kwargs`` go to it
    (``padding_side`` defaults to ``"left"``, as decoder-only generation needs)."""
    folder = Path(folder)
    manifest = Manifest.read(folder)
    ours = TextTokenizer(folder, bos_token_id=manifest.tokenizer.get("bos_token_id"),
                         eos_token_ids=manifest.tokenizer.get("eos_token_ids") or ())
    kwargs.setdefault("padding_side", "left")
    kwargs.setdefault("model_input_names", ["input_ids", "attention_mask"])
    tok = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    if not isinstance(tok, PreTrainedTokenizerFast):  # the post-processor below is a tokenizers one
        return tok
    bos = ours.bos_token_id
    if ours.add_bos and bos is not None and tok("a")["input_ids"][:1] != [bos]:
        text = ours.token_text(bos)
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{text} $A", pair=f"{text} $A {text} $B", special_tokens=[(text, bos)])
    pad = manifest.tokenizer.get("pad_token_id")
    if pad is not None and tok.pad_token_id != pad:
        tok.pad_token = ours.token_text(int(pad))
    return tok
