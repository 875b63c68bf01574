"""The committed trained model (examples/liquid-metal-tiny).

The model card's held-out perplexity is recomputed from the committed weights,
tokenizer and heldout.txt with the same function that produced it.
"""
import json

import pytest
import torch
from tokenizers import Tokenizer

from lmexport.modeling.checkpoint import load_model
from lmexport.perplexity import perplexity_torch

from conftest import BUNDLED as MODEL_DIR

FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
         "heldout.txt", "loss_curve.png", "metrics.json")


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((MODEL_DIR / "metrics.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def loaded():
    model, ckpt = load_model(MODEL_DIR)
    tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    return model, ckpt, tok


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
