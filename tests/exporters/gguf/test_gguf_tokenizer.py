"""Tokenizer metadata in GGUF: byte-level BPE as gpt2, SentencePiece as llama."""
from __future__ import annotations

import io
import json

import pytest
from gguf import Keys, TokenType
from tokenizers import Tokenizer

from lmexport.errors import InputError
from lmexport.exporters.gguf.write import GGUFOptions, export_gguf
from lmexport.exporters.gguf.tokenizer import read_tokenizer
from lmexport.exporters.gguf.reader import open_gguf
from lmexport.modeling.tiny import CHAT_TEMPLATE, SAMPLE_TEXT, make_model_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("tok") / "tiny", seed=0)


def test_byte_level_bpe_is_written_as_gpt2(model_dir, tmp_path):
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    merges = json.loads((model_dir / "tokenizer.json").read_text())["model"]["merges"]
    out = export_gguf(model_dir, tmp_path / "m.gguf", GGUFOptions(outtype="f32")).paths[0]
    g = open_gguf(out)
    assert g.value(Keys.Tokenizer.MODEL) == "gpt2" and g.value(Keys.Tokenizer.PRE) == "gpt-2"
    tokens = g.value(Keys.Tokenizer.LIST)
    assert tokens == [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    types = g.value(Keys.Tokenizer.TOKEN_TYPE)
    assert types[:4] == [TokenType.CONTROL] * 4 and set(types[4:]) == {TokenType.NORMAL}
    assert len(g.value(Keys.Tokenizer.MERGES)) == len(merges)
    ids = {k: g.value(f"tokenizer.ggml.{k}") for k in ("bos_token_id", "eos_token_id", "unknown_token_id",
                                                         "padding_token_id")}
    assert ids == {"bos_token_id": 1, "eos_token_id": 2, "unknown_token_id": 0, "padding_token_id": 3}
    # the tiny tokenizer adds no BOS (transformers agrees: test_gguf_llamacpp_tokens)
    assert g.value(Keys.Tokenizer.ADD_BOS) is False and g.value(Keys.Tokenizer.ADD_EOS) is False
    assert g.value(Keys.Tokenizer.CHAT_TEMPLATE) == CHAT_TEMPLATE


def _sentencepiece_folder(model_dir, tmp_path):
    """The tiny model with a SentencePiece tokenizer.model (trained here) instead of tokenizer.json."""
    import shutil

    import sentencepiece as spm

    folder = tmp_path / "spm"
    shutil.copytree(model_dir, folder)
    (folder / "tokenizer.json").unlink()
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SAMPLE_TEXT.splitlines() * 8), model_writer=buf,
                                   vocab_size=120, model_type="bpe", hard_vocab_limit=False,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "LlamaTokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_sentencepiece_is_written_as_llama_and_padded(model_dir, tmp_path):
    import sentencepiece as spm

    folder = _sentencepiece_folder(model_dir, tmp_path)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    out = export_gguf(folder, tmp_path / "spm.gguf", GGUFOptions(outtype="f16")).paths[0]
    g = open_gguf(out)
    n = g.config().vocab_size
    assert g.value(Keys.Tokenizer.MODEL) == "llama"
    tokens, scores, types = (g.value(k) for k in (Keys.Tokenizer.LIST, Keys.Tokenizer.SCORES,
                                                  Keys.Tokenizer.TOKEN_TYPE))
    assert len(tokens) == len(scores) == len(types) == n > sp.vocab_size()
    assert tokens[:sp.vocab_size()] == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    assert scores[10] == pytest.approx(sp.get_score(10))
    assert types[0] == TokenType.UNKNOWN and types[1] == types[2] == TokenType.CONTROL
    assert tokens[-1] == f"[PAD{n - 1}]" and types[-1] == TokenType.UNUSED
    assert g.value("tokenizer.ggml.bos_token_id") == 1 and g.value("tokenizer.ggml.eos_token_id") == 2


def test_tokenizer_problems_are_clear(model_dir, tmp_path):
    with pytest.raises(InputError, match="has 384 tokens but the model's embedding has only 100 rows"):
        read_tokenizer(model_dir, vocab_size=100)
    with pytest.raises(InputError, match="no tokenizer"):
        read_tokenizer(tmp_path, vocab_size=100)
