"""``tokenizer.ggml.pre``: which of llama.cpp's BPE pre-tokenizers a tokenizer.json uses.

llama.cpp splits text before BPE with a fixed regex per pre-tokenizer name
(``llama-vocab.cpp``); its converter names a tokenizer by hashing the ids of a
check text and looking the hash up in a table of known models, an unknown hash
being an error. lmexport identifies the families it supports by the structure
of tokenizer.json instead (the normalizer, the pre-tokenizer chain, the BPE
options), each of which llama.cpp reproduces exactly:

=============  ==========================================================================
name           tokenizer.json
=============  ==========================================================================
``gpt-2``      no normalizer; ``ByteLevel(use_regex=True, add_prefix_space=False)`` (GPT-2,
               and the tiny models lmexport trains)
``smollm``     no normalizer; ``Digits(individual_digits=True)`` then that ``ByteLevel``
``llama-bpe``  no normalizer; ``Split`` on Llama 3's regex (``Isolated``) then
               ``ByteLevel(use_regex=False)``; BPE with ``ignore_merges`` (Llama 3)
=============  ==========================================================================

Anything else is an ``InputError`` that names ``--tokenizer-pre``: a wrong name
makes llama.cpp split text differently from Hugging Face, silently. The flag
takes any llama.cpp name when the user knows better.
"""
from __future__ import annotations

import re

from lmexport.errors import InputError
from lmexport.formats.gguf import LLAMA3_REGEX

PRE_FLAG = "--tokenizer-pre"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def steps(node: dict | None) -> list[dict]:
    """A normalizer or pre-tokenizer as a flat list of its steps (Sequence unrolled)."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        children = node.get("pretokenizers", node.get("normalizers")) or []
        return [s for child in children for s in steps(child)]
    return [node]


def _byte_level(step: dict, use_regex: bool) -> bool:
    return (step.get("type") == "ByteLevel" and bool(step.get("use_regex", True)) == use_regex
            and not step.get("add_prefix_space", False))


def identify(tokenizer_json: dict) -> str | None:
    """llama.cpp's name for this byte-level BPE's pre-tokenizer, or None when it is not one we know."""
    if steps(tokenizer_json.get("normalizer")):
        return None
    pre = steps(tokenizer_json.get("pre_tokenizer"))
    model = tokenizer_json.get("model") or {}
    if len(pre) == 1 and _byte_level(pre[0], True):
        return "gpt-2"
    if (len(pre) == 2 and pre[0].get("type") == "Digits" and pre[0].get("individual_digits")
            and _byte_level(pre[1], True)):
        return "smollm"
    if (len(pre) == 2 and pre[0].get("type") == "Split" and (pre[0].get("pattern") or {}).get("Regex") == LLAMA3_REGEX
            and pre[0].get("behavior") == "Isolated" and not pre[0].get("invert")
            and _byte_level(pre[1], False) and model.get("ignore_merges")):
        return "llama-bpe"
    return None


def describe(tokenizer_json: dict) -> str:
    parts = [s.get("type", "?") for s in steps(tokenizer_json.get("pre_tokenizer"))]
    norm = [s.get("type", "?") for s in steps(tokenizer_json.get("normalizer"))]
    return f"pre-tokenizer [{', '.join(parts) or 'none'}], normalizer [{', '.join(norm) or 'none'}]"


def choose(tokenizer_json: dict, override: str | None, where: str) -> str:
    """The name to write: ``override`` if given (checked for form), else the identified one, else an error."""
    if override is not None:
        if not _NAME.match(override):
            raise InputError(f"{PRE_FLAG} {override!r} is not a llama.cpp pre-tokenizer name",
                             hint="names look like gpt-2, llama-bpe, smollm, qwen2")
        return override
    name = identify(tokenizer_json)
    if name is None:
        raise InputError(f"lmexport does not know which llama.cpp pre-tokenizer matches {where} "
                         f"({describe(tokenizer_json)})",
                         hint=f"pass {PRE_FLAG} NAME with llama.cpp's name for it (known here: gpt-2, smollm, "
                              "llama-bpe); a wrong name makes llama.cpp split text differently")
    return name
