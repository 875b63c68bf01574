"""Left-padded batches, the one way every part of lmexport builds them (numpy only).

Rows are right-aligned: padding (``pad_id``, mask 0) on the left, so every row's
next token is the last column. Positions follow Hugging Face: the number of valid
tokens before each one, 0 on padding.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both int64 [len(rows), longest row]."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
    return ids, mask


def positions_from_mask(mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """Positions of the last ``new_tokens`` columns of ``mask`` (the tokens of this call)."""
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return pos[:, mask.shape[1] - new_tokens:].astype(np.int64)
