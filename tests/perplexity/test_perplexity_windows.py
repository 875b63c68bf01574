"""Perplexity windowing and scoring (lmexport.perplexity): every token but the first
scored exactly once, the same numbers as one cross-entropy."""
import math

import pytest
import torch

from lmexport.errors import InputError
from lmexport.modeling.engine import TorchEngine
from lmexport.perplexity import Window, aggregate, engine_scorer, perplexity, perplexity_torch, windows

from conftest import tiny_model


@pytest.mark.parametrize("window", [2, 3, 5, 8])
def test_windows_score_every_token_but_the_first_exactly_once(window):
    for n in range(2, 30):
        for stride in range(1, window):
            spans = windows(n, window, stride)
            scored = [i for w in spans for i in range(w.start + w.first_target, w.end)]
            assert scored == list(range(1, n)), (n, window, stride, spans)
            for w in spans:
                assert 1 <= w.first_target < w.end - w.start <= window
                assert w.n_targets == w.end - w.start - w.first_target


def test_windows_non_overlapping_and_strided_layouts():
    assert windows(10, 4) == [Window(0, 4, 1), Window(3, 7, 1), Window(6, 10, 1)]
    assert windows(4, 4) == [Window(0, 4, 1)]
    assert windows(10, 4, 2) == [Window(0, 4, 1), Window(2, 6, 2), Window(4, 8, 2), Window(6, 10, 2)]


def test_windows_refuse_bad_arguments():
    for args in [(10, 1, None), (10, 4, 0), (10, 4, 4), (1, 4, None), (0, 4, None)]:
        with pytest.raises(InputError):
            windows(*args)
    with pytest.raises(InputError):
        aggregate(0.0, 0)


def test_perplexity_of_a_uniform_scorer_is_the_vocabulary_size():
    vocab = 37

    def uniform(ids, first_target):
        return (len(ids) - first_target) * math.log(vocab)

    result = perplexity(uniform, list(range(100)), window=16, stride=5)
    assert result.n_targets == 99 and result.n_tokens == 100
    assert result.perplexity == pytest.approx(vocab, rel=1e-12)
    assert result.to_dict()["stride"] == 5


def test_perplexity_torch_matches_cross_entropy_of_one_forward(one_thread):
    model = tiny_model()
    ids = torch.randint(0, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits[0]
    expected = math.exp(float(torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:])))
    assert perplexity_torch(model, ids[0].tolist(), window=40) == pytest.approx(expected, rel=1e-5)
    # Strided: each later window scores its last `stride` tokens with the rest as context.
    score = engine_scorer(TorchEngine(model=model))
    manual = score(ids[0, 0:16].tolist(), 1) + score(ids[0, 8:24].tolist(), 8) + \
        score(ids[0, 16:32].tolist(), 8) + score(ids[0, 24:40].tolist(), 8)
    assert perplexity_torch(model, ids[0].tolist(), window=16, stride=8) == pytest.approx(
        math.exp(manual / 39), rel=1e-6)
