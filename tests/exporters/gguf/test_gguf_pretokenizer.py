"""tokenizer.ggml.pre: identified by tokenizer.json's structure, or given with --tokenizer-pre; never a silent default."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from gguf import Keys
from tokenizers import pre_tokenizers

from lmexport.errors import InputError
from lmexport.exporters.gguf import pretokenizer
from lmexport.exporters.gguf.reader import open_gguf
from lmexport.exporters.gguf.write import GGUFOptions, export_gguf
from lmexport.modeling.tiny import make_model_folder
from lmexport.modeling.tiny_tokenizers import write_tokenizer_folder, _byte_level_bpe
from lmexport.modeling.tiny import write_tokenizer_files


@pytest.mark.parametrize("family, name", [("gpt2-nobos", "gpt-2"), ("llama3-bpe", "llama-bpe"),
                                          ("smollm-digits", "smollm")])
def test_the_supported_families_are_identified(tmp_path, family, name):
    folder = write_tokenizer_folder(family, tmp_path / family)
    assert pretokenizer.identify(json.loads((folder / "tokenizer.json").read_text())) == name


def test_near_misses_are_not_identified(tmp_path):
    folder = write_tokenizer_folder("llama3-bpe", tmp_path / "l3")
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["model"]["ignore_merges"] = False               # llama.cpp's llama-bpe always ignores merges
    assert pretokenizer.identify(tj) is None
    gpt2 = json.loads((write_tokenizer_folder("gpt2-bos", tmp_path / "g") / "tokenizer.json").read_text())
    gpt2["pre_tokenizer"]["add_prefix_space"] = True
    assert pretokenizer.identify(gpt2) is None
    gpt2["pre_tokenizer"]["add_prefix_space"] = False
    gpt2["normalizer"] = {"type": "NFC"}
    assert pretokenizer.identify(gpt2) is None


@pytest.fixture(scope="module")
def unknown_pre_model(tmp_path_factory):
    """A tiny model whose byte-level BPE splits on whitespace first: no family lmexport knows."""
    folder = make_model_folder(tmp_path_factory.mktemp("pre") / "model", seed=0)
    tok = _byte_level_bpe(pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                   pre_tokenizers.ByteLevel(add_prefix_space=False)]),
                          vocab_size=384)
    write_tokenizer_files(tok, folder)
    return folder


def test_an_unknown_pre_tokenizer_is_an_error_naming_the_flag(unknown_pre_model, tmp_path):
    with pytest.raises(InputError, match="--tokenizer-pre NAME") as info:
        export_gguf(unknown_pre_model, tmp_path / "m.gguf", GGUFOptions(outtype="f32"))
    assert "WhitespaceSplit, ByteLevel" in str(info.value)
    assert not (tmp_path / "m.gguf").exists()


def test_the_flag_writes_the_name_given(unknown_pre_model, tmp_path):
    out = export_gguf(unknown_pre_model, tmp_path / "m.gguf", GGUFOptions(outtype="f32", tokenizer_pre="gpt-2"))
    assert open_gguf(out.paths[0]).value(Keys.Tokenizer.PRE) == "gpt-2"
    with pytest.raises(InputError, match="not a llama.cpp pre-tokenizer name"):
        export_gguf(unknown_pre_model, tmp_path / "n.gguf", GGUFOptions(outtype="f32", tokenizer_pre="GPT 2!"))


def test_the_cli_error_is_one_line_and_exit_2(unknown_pre_model, tmp_path):
    cmd = [sys.executable, "-m", "lmexport.cli", "gguf", str(unknown_pre_model), "-o", str(tmp_path / "m.gguf"),
           "--outtype", "f32"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--tokenizer-pre" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(cmd + ["--tokenizer-pre", "gpt-2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert open_gguf(tmp_path / "m.gguf").value(Keys.Tokenizer.PRE) == "gpt-2"


def test_the_flag_is_refused_for_sentencepiece(tmp_path):
    import shutil

    model = make_model_folder(tmp_path / "model", seed=0, vocab_size=384)
    sp = write_tokenizer_folder("sp-model", tmp_path / "sp")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink()
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(sp / name, model / name)
    with pytest.raises(InputError, match="applies to byte-level BPE"):
        export_gguf(model, tmp_path / "m.gguf", GGUFOptions(outtype="f32", tokenizer_pre="gpt-2"))
