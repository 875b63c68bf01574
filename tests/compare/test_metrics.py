"""The logit metrics every validator and parity run reports (lmexport.compare.metrics)."""
import numpy as np
import pytest

from lmexport.compare.metrics import compare_logits, greedy_agreement_length, overall, relative_difference
from lmexport.compare.tolerances import TOLERANCES, check, get_tolerance


def test_identical_logits_have_zero_error_full_agreement_and_unit_cosine():
    ref = np.random.default_rng(0).standard_normal((5, 11)).astype(np.float32)
    m = compare_logits(ref, ref.copy())
    assert m.max_abs == 0 and m.mean_abs == 0 and m.top1 == 1.0
    assert m.cosine_min == pytest.approx(1.0) and m.kl_max == pytest.approx(0.0, abs=1e-12)


def test_a_changed_argmax_lowers_top1_and_raises_kl():
    ref = np.zeros((4, 6), dtype=np.float32)
    ref[:, 0] = 5.0
    art = ref.copy()
    art[1, 0], art[1, 3] = 0.0, 5.0                     # one row now prefers token 3
    m = compare_logits(ref, art)
    assert m.top1 == pytest.approx(0.75)
    assert m.max_abs == pytest.approx(5.0) and m.kl_max > 1.0
    whole = overall([compare_logits(ref, ref), m])
    assert whole.top1 == pytest.approx(0.875) and whole.max_abs == pytest.approx(5.0)


def test_nan_and_inf_never_pass_as_small_errors():
    ref = np.ones((2, 3), dtype=np.float32)
    for bad in (np.nan, np.inf):
        art = ref.copy()
        art[0, 1] = bad
        m = compare_logits(ref, art)
        assert m.nonfinite == 1
        for preset in TOLERANCES:
            assert any("NaN/inf" in f for f in check(m, get_tolerance(preset))), preset


def test_greedy_agreement_counts_the_identical_prefix_per_row():
    ref = np.array([[1, 2, 3, 4], [1, 2, 3, 4]])
    art = np.array([[1, 2, 9, 4], [1, 2, 3, 4]])
    assert greedy_agreement_length(ref, art).tolist() == [2, 4]


def test_relative_difference_is_scaled_by_the_reference():
    ref = np.array([100.0, -50.0])
    assert relative_difference(ref, ref + 1.0) == pytest.approx(0.01)
