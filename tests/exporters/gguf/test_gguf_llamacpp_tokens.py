"""llama.cpp tokenizes an lmexport GGUF exactly as transformers tokenizes the source folder.

The real consumer: llama-cpp-python (``vocab_only=True``) reads the ``--arch llama`` GGUF
of a tiny Llama checkpoint around each tokenizer family and the bundled model's
tokenizer; ``tokenize(..., add_bos=True)`` (llama.cpp adds what the GGUF's
add_bos/add_eos say) must equal ``AutoTokenizer(folder)(text).input_ids`` for mixed
texts (code, accents, CJK, emoji, runs of spaces, digits).

llama-cpp-python is built from its sdist by the project's build path; until the
test command provides it, these tests skip when ``llama_cpp`` is not importable.
"""
from __future__ import annotations

import pytest
from gguf import Keys, TokenType
from transformers import AutoTokenizer

from conftest import BUNDLED
from lmexport.exporters.gguf.reader import open_gguf
from lmexport.exporters.gguf.write import GGUFOptions, export_gguf
from lmexport.modeling.tiny_tokenizers import FAMILIES, MIXED_TEXTS, llama_folder_with_tokenizer, write_tokenizer_folders

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (build it from its sdist "
                                                   "with lmexport's llama.cpp build path)")

PRE = {"gpt2-nobos": "gpt-2", "gpt2-bos": "gpt-2", "llama3-bpe": "llama-bpe", "smollm-digits": "smollm",
       "bundled": "gpt-2"}


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamacpp-tokens")
    folders = write_tokenizer_folders(root / "tokenizers")
    folders["bundled"] = BUNDLED
    out = {}
    for family, tokenizer_dir in folders.items():
        model_dir = llama_folder_with_tokenizer(tokenizer_dir, root / "models" / family)
        [path] = export_gguf(model_dir, root / f"{family}.gguf", GGUFOptions(outtype="f32", arch="llama")).paths
        out[family] = (model_dir, path)
    return out


def leading_space_exception(family: str, text: str) -> bool:
    """transformers' Metaspace (its SentencePiece tokenizers) puts no "▁" before a text that already starts
    with a space; SentencePiece and llama.cpp always do, and no GGUF key says otherwise. For such a text
    llama.cpp gives SentencePiece's ids, which the test checks instead."""
    return family.startswith("sp-") and text.startswith(" ")


@pytest.mark.parametrize("family", [*FAMILIES, "bundled"])
def test_llama_cpp_ids_equal_transformers_ids(ggufs, family):
    model_dir, path = ggufs[family]
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text in MIXED_TEXTS:
        want = hf(text).input_ids
        got = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        if leading_space_exception(family, text):
            sp = sentencepiece_ids(ggufs["sp-model"][0], text)
            bos = want[:1] if want[:1] == [hf.bos_token_id] else []
            assert got == bos + sp and want != got
            continue
        assert got == want, (text, hf.convert_ids_to_tokens(want), hf.convert_ids_to_tokens(got))


def sentencepiece_ids(folder, text: str) -> list[int]:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).encode(text)


@pytest.mark.parametrize("family", [*FAMILIES, "bundled"])
def test_gguf_tokenizer_metadata(ggufs, family):
    model_dir, path = ggufs[family]
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    g = open_gguf(path)
    bos = hf("x").input_ids[:1] == [hf.bos_token_id]
    assert g.value(Keys.Tokenizer.ADD_BOS) is bos and g.value(Keys.Tokenizer.ADD_EOS) is False
    types = g.value(Keys.Tokenizer.TOKEN_TYPE)
    tokens = g.value(Keys.Tokenizer.LIST)
    if family.startswith("sp-"):
        assert g.value(Keys.Tokenizer.MODEL) == "llama" and Keys.Tokenizer.PRE not in g.fields
        assert g.value(Keys.Tokenizer.ADD_PREFIX) is True
        assert types[hf.unk_token_id] == TokenType.UNKNOWN
        assert types[hf.bos_token_id] == types[hf.eos_token_id] == TokenType.CONTROL
        assert types[tokens.index("<0x41>")] == TokenType.BYTE
        scores = g.value(Keys.Tokenizer.SCORES)
        if family == "sp-json":           # merge order: the first merge's token scores highest
            import json
            first = json.loads((model_dir / "tokenizer.json").read_text())["model"]["merges"][0]
            first = "".join(first) if isinstance(first, list) else first.replace(" ", "")
            assert scores[tokens.index(first)] == 0.0
    else:
        assert g.value(Keys.Tokenizer.MODEL) == "gpt2" and g.value(Keys.Tokenizer.PRE) == PRE[family]
        assert types[hf.bos_token_id] == types[hf.unk_token_id] == TokenType.CONTROL   # added special tokens
