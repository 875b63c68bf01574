"""Parity inputs: built-in or user prompts, tokenised and left-padded into batches."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmexport.errors import InputError
from lmexport.runtime.batch import left_pad

# Different lengths on purpose: batched together they exercise left padding.
BUILTIN_PROMPTS = (
    "def read_config(path):\n    \"\"\"Read a JSON file and return",
    "The",
    "Return a new list with the items sorted by key. If reverse is true,",
    "import os\nimport sys\n\nclass Handler:",
    "Raise ValueError when",
    "for line in open(name):",
)


def read_prompt_file(path: str | Path) -> list[str]:
    """One prompt per non-empty line; '\\n' inside a line stands for a newline."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"prompt file {path} is not UTF-8 text (byte {exc.start})",
                         hint="save it as UTF-8") from exc
    prompts = [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"prompt file {path} has no prompts", hint="write one prompt per line")
    return prompts


@dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray        # (B, T) int64, left-padded
    attention_mask: np.ndarray   # (B, T) int64
    lengths: list[int]


def tokenize(prompts: list[str], model_dir: Path, vocab_size: int, bos_id: int | None,
             max_tokens: int) -> list[list[int]]:
    """Token ids per prompt, as transformers gives them for the checkpoint's tokenizer
    (``modeling.tokenizer.checkpoint_tokenizer``: BOS only where it adds one); a folder
    without a tokenizer gets deterministic ids derived from the bytes, after ``bos_id``."""
    from lmexport.modeling.tokenizer import checkpoint_tokenizer, has_tokenizer

    out = []
    if has_tokenizer(model_dir):
        tok = checkpoint_tokenizer(model_dir)
        encoded = [tok.encode(p) for p in prompts]
    else:
        encoded = [([bos_id] if bos_id is not None else []) + [(b * 31 + i) % vocab_size
                                                                for i, b in enumerate(p.encode("utf-8"))]
                   for p in prompts]
    for ids in encoded:
        if len(ids) > max_tokens:
            raise InputError(f"a prompt has {len(ids)} tokens; with the decode steps the model's context "
                             f"leaves room for {max_tokens}", hint="shorten the prompt or use fewer --steps")
        out.append([i for i in ids if 0 <= i < vocab_size] or [0])
    return out


def make_batches(token_lists: list[list[int]], batch_size: int, pad_id: int) -> list[Batch]:
    batches = []
    for start in range(0, len(token_lists), batch_size):
        group = token_lists[start:start + batch_size]
        ids, mask = left_pad(group, pad_id)
        batches.append(Batch(ids, mask, [len(t) for t in group]))
    return batches
