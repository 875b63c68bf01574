"""The tolerance presets scale with the tensor they bound (atol + rtol x max |ref|)."""
from __future__ import annotations

import numpy as np
import pytest

from lmexport.exporters.onnx.validate import StateStats, state_failure
from lmexport.compare.metrics import compare_logits
from lmexport.compare.tolerances import TOLERANCES, check, exceeds, get_tolerance, limit

FP32 = get_tolerance("fp32")


def _logits(scale: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((6, 50)) * scale


def test_the_same_relative_rounding_passes_at_any_scale():
    """What SmolLM2 showed: 3e-6 relative on logits of ~35 is 1e-4 absolute, and correct."""
    for scale in (0.1, 1.0, 35.0, 1000.0):
        ref = _logits(scale)
        art = ref * (1 + 3e-6 * np.sign(ref))
        assert check(compare_logits(ref, art), FP32) == [], scale


def test_an_absolute_error_that_is_large_for_the_tensor_fails():
    ref = _logits(0.1)
    art = ref.copy()
    art[2, 7] += 1e-4 * 400          # 4% of the largest logit
    failures = check(compare_logits(ref, art), FP32)
    assert failures[0].startswith("max |logit diff| 0.04 >") and "relative" in failures[0], failures


def test_state_bounds_are_relative_to_each_state():
    big, small = StateStats(), StateStats()
    ref = np.full((1, 3, 4, 2), 300.0)               # a running context sum of hundreds
    big.add(ref, ref + 1.5e-4)
    assert state_failure("present_context.1", big, FP32) is None
    ref = np.full((1, 3, 4, 2), 0.05)                 # a small state: the same error is 0.3%
    small.add(ref, ref + 1.5e-4)
    assert "present_conv.0: max |diff|" in state_failure("present_conv.0", small, FP32)


def test_nan_and_zero_scale():
    assert exceeds(float("nan"), 1.0, 1e-5, 1e-4)
    assert not exceeds(5e-6, 0.0, 1e-5, 1e-4)        # an all-zero tensor: atol alone
    assert exceeds(2e-5, 0.0, 1e-5, 1e-4)
    assert limit(1e-5, 1e-4, 10.0) == pytest.approx(1.01e-3)


@pytest.mark.parametrize("name", sorted(TOLERANCES))
def test_every_preset_bounds_the_logits_and_names_its_state_bound(name):
    t = TOLERANCES[name]
    assert t.atol > 0 and t.hidden_rel > 0
    assert t.rtol is not None or (t.min_top1 is not None and t.max_kl is not None and t.min_cosine is not None)
    onnx_presets = {"fp32", "fp16", "int8", "int4"}   # ONNX validation compares every state it carries
    assert (t.state_rtol is not None) == (name in onnx_presets), "GGUF and .pte engines keep their state inside"
