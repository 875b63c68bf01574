"""Left-padded batches and their positions (lmexport.runtime.batch)."""
import numpy as np

from lmexport.runtime.batch import left_pad, positions_from_mask


def test_positions_follow_the_hugging_face_left_padding_convention():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert positions_from_mask(mask, 5).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert positions_from_mask(mask, 1).tolist() == [[2], [4]]


def test_left_pad_right_aligns_rows_with_their_mask():
    ids, mask = left_pad([[5, 6, 7], [9], []], pad_id=0)
    assert ids.dtype == mask.dtype == np.int64
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert positions_from_mask(mask, 3).tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 0]]
