"""One tokenizer loader, one BOS rule: lmexport's ids are transformers' ids.

Each tokenizer family (lmexport.modeling.tiny_tokenizers) and the bundled model are
read by ``AutoTokenizer.from_pretrained``, by the resolved loader (parity, perplexity,
convert, exporters), and, after the resolved files are written as the ONNX exporter
writes them, by the torch-free runtime loader and by transformers again.
"""
from __future__ import annotations

import json
import logging

import pytest
from transformers import AutoTokenizer

from conftest import BUNDLED
from lmexport.errors import ArtifactError, InputError
from lmexport.modeling.tiny_tokenizers import FAMILIES, MIXED_TEXTS, write_tokenizer_folders
from lmexport.modeling.tokenizer import checkpoint_tokenizer, resolve_tokenizer
from lmexport.parity.inputs import tokenize
from lmexport.runtime.tokenizer import TextTokenizer

EXPECTED_BOS = {"gpt2-nobos": False, "gpt2-bos": True, "llama3-bpe": True, "smollm-digits": False,
                "sp-model": True, "sp-model-nobos": False, "sp-json": True, "bundled": False}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = write_tokenizer_folders(tmp_path_factory.mktemp("tokenizers"))
    out["bundled"] = BUNDLED
    return out


def hf_ids(folder, text, special=True):
    return AutoTokenizer.from_pretrained(str(folder))(text, add_special_tokens=special).input_ids


@pytest.mark.parametrize("family", [*FAMILIES, "bundled"])
def test_every_reader_gives_transformers_ids(folders, family, tmp_path):
    folder = folders[family]
    resolved = resolve_tokenizer(folder)
    assert resolved.add_bos is EXPECTED_BOS[family] and resolved.add_eos is False
    source = checkpoint_tokenizer(folder)
    resolved.write(tmp_path)                        # what the ONNX exporter writes
    exported = TextTokenizer.from_folder(tmp_path)  # the runtime's loader, no transformers
    for text in MIXED_TEXTS:
        want = hf_ids(folder, text)
        assert source.encode(text) == want, text
        assert exported.encode(text) == want, text
        assert hf_ids(tmp_path, text) == want, text   # transformers agrees on the written files too
        assert exported.encode(text, add_special_tokens=False) == hf_ids(folder, text, special=False)
    assert (want[:1] == [source.bos_token_id]) is EXPECTED_BOS[family]
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["add_bos_token"] is EXPECTED_BOS[family] and config["add_eos_token"] is False


def test_parity_inputs_use_the_same_ids(folders):
    for family in ("gpt2-nobos", "gpt2-bos", "sp-model"):
        [ids] = tokenize([MIXED_TEXTS[0]], folders[family], vocab_size=10_000, bos_id=1, max_tokens=1000)
        assert ids == hf_ids(folders[family], MIXED_TEXTS[0])


def test_the_bundled_files_agree_on_no_bos():
    """Trained without BOS (examples/train_tiny.py): tokenizer.json adds nothing, the config says so."""
    config = json.loads((BUNDLED / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_json = json.loads((BUNDLED / "tokenizer.json").read_text(encoding="utf-8"))
    assert config["add_bos_token"] is False and config["add_eos_token"] is False
    assert tokenizer_json["post_processor"] is None
    assert TextTokenizer.from_folder(BUNDLED).encode("def f") == hf_ids(BUNDLED, "def f")


def test_a_disagreeing_config_is_reported_and_transformers_wins(folders, tmp_path, caplog):
    import shutil

    folder = shutil.copytree(folders["gpt2-nobos"], tmp_path / "says-bos")
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["add_bos_token"] = True      # the bundled model's old files: transformers 5 adds no BOS here
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        tok = checkpoint_tokenizer(folder)
    assert tok.encode("def f") == hf_ids(folder, "def f")
    assert "add_bos_token: true" in caplog.text


@pytest.mark.parametrize("content, match", [("{not json", "not valid JSON"), ("[1, 2]", "JSON object, not a list"),
                                            ('"text"', "JSON object, not a str")])
def test_a_broken_tokenizer_config_is_one_clear_error(folders, tmp_path, content, match):
    import shutil

    folder = shutil.copytree(folders["gpt2-bos"], tmp_path / "broken")
    (folder / "tokenizer_config.json").write_text(content, encoding="utf-8")
    with pytest.raises(ArtifactError, match=match):
        checkpoint_tokenizer(folder)
    with pytest.raises(ArtifactError, match=match):
        TextTokenizer.from_folder(folder)


def test_a_folder_without_tokenizer_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="has no tokenizer"):
        resolve_tokenizer(tmp_path)
