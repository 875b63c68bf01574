"""The committed trained model (examples/liquid-metal-tiny) and lmexport.perplexity.

The model card's held-out perplexity is recomputed from the committed weights,
tokenizer and heldout.txt with the same function that produced it.
"""
import json
import math

import pytest
import torch
from tokenizers import Tokenizer

from lmexport.modeling.checkpoint import load_model
from lmexport.errors import InputError
from lmexport.perplexity import Window, aggregate, perplexity, perplexity_torch, torch_scorer, windows

from conftest import tiny_model
from conftest import BUNDLED as MODEL_DIR

FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
         "heldout.txt", "loss_curve.png", "metrics.json")


@pytest.fixture
def one_thread():
    """Score on one thread: on a busy shared machine a spinning 2-thread pool runs ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((MODEL_DIR / "metrics.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def loaded():
    model, ckpt = load_model(MODEL_DIR)
    tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    return model, ckpt, tok


# ---------------------------------------------------------------------------- windowing (torch-free)
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
    score = torch_scorer(model)
    manual = score(ids[0, 0:16].tolist(), 1) + score(ids[0, 8:24].tolist(), 8) + \
        score(ids[0, 16:32].tolist(), 8) + score(ids[0, 24:40].tolist(), 8)
    assert perplexity_torch(model, ids[0].tolist(), window=16, stride=8) == pytest.approx(
        math.exp(manual / 39), rel=1e-6)


# ---------------------------------------------------------------------------- the committed model
def test_folder_is_complete_and_small():
    missing = [n for n in FILES if not (MODEL_DIR / n).is_file()]
    assert not missing, f"{MODEL_DIR} lacks {missing}"
    size = sum(p.stat().st_size for p in MODEL_DIR.iterdir() if p.is_file())
    assert size < 20 * 2**20, f"{MODEL_DIR} is {size / 2**20:.1f} MiB"
    assert (MODEL_DIR / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loads_with_its_tokenizer(loaded, metrics):
    model, ckpt, tok = loaded
    c = ckpt.config
    assert c.streaming and c.tie_word_embeddings
    assert tok.get_vocab_size() == c.vocab_size
    assert c.hidden_size % 64 == 0 and c.intermediate_size % 32 == 0, "quantiser blocks must fit"
    assert sum(p.numel() for p in model.parameters()) == metrics["parameters"]
    tok_cfg = json.loads((MODEL_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert "chat_template" in tok_cfg
    assert tok.token_to_id(tok_cfg["eos_token"]) == c.eos_token_id
    text = "def add(a, b):\n    return a + b\n"
    assert tok.decode(tok.encode(text).ids) == text


def test_heldout_perplexity_matches_the_model_card(loaded, metrics, one_thread):
    model, _, tok = loaded
    ids = tok.encode((MODEL_DIR / "heldout.txt").read_text(encoding="utf-8")).ids
    assert len(ids) == metrics["heldout_tokens"]
    ppl = perplexity_torch(model, ids, window=metrics["perplexity_window"], stride=metrics["perplexity_stride"])
    card = metrics["heldout_perplexity"]
    assert abs(ppl / card - 1) < 0.01, f"perplexity {ppl:.4f}, model card says {card:.4f}"
    assert f"{card:.4f}" in (MODEL_DIR / "README.md").read_text(encoding="utf-8")
    # It learned something: far better than a unigram model of the same tokens.
    assert ppl < metrics["unigram_perplexity"] / 4


def test_greedy_text_looks_like_python(loaded, metrics, one_thread):
    model, _, tok = loaded
    prompt = 'def read_file(path):\n    """'
    ids = tok.encode(prompt).ids
    with torch.no_grad():
        for _ in range(30):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    text = tok.decode(ids)[len(prompt):]
    assert '"""' in text and "(" in text, text
    assert metrics["samples"][prompt].startswith(prompt + text[:20]), "the model card's sample is stale"
