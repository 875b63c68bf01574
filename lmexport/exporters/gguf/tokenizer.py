"""The tokenizer metadata of a GGUF file, read from a checkpoint's tokenizer files.

Three kinds of tokenizer folder are understood, in this order:

* ``tokenizer.model`` (SentencePiece, as in Llama/TinyLlama): ``tokenizer.ggml.model =
  llama`` with pieces, scores and token types read by ``gguf.vocab.SentencePieceVocab``;
* ``tokenizer.json`` holding a byte-level BPE (ByteLevel decoder, no byte fallback):
  ``gpt2`` with the vocabulary, token types and merges;
* ``tokenizer.json`` holding a byte-fallback BPE (a Hugging Face "fast" Llama
  tokenizer without its ``.model``): ``llama`` with scores ``-id`` and the merges.

Special-token ids, add_bos/add_eos and the chat template come from
``gguf.vocab.SpecialVocab`` (tokenizer_config.json, tokenizer.json's added tokens,
config.json), the same reader llama.cpp's converter uses. A vocabulary shorter
than the model's embedding is padded with ``[PAD{id}]`` tokens of type UNUSED, as
llama.cpp's converter does; a longer one is an error.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
from gguf import TokenType

from lmexport.jsonio import read_json_object
from lmexport.errors import InputError
from lmexport.exporters.gguf.format import TOKENIZER_ID_KEYS

log = logging.getLogger(__name__)
SPECIAL_TYPES = tuple(TOKENIZER_ID_KEYS)   # bos, eos, unk, pad


@dataclass(frozen=True)
class GGUFTokenizer:
    model: str                          # tokenizer.ggml.model: "llama" or "gpt2"
    pre: str | None                     # tokenizer.ggml.pre (gpt2 only)
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    scores: tuple[float, ...] | None
    merges: tuple[str, ...] | None
    special_ids: dict[str, int]         # "bos"/"eos"/"unk"/"pad" -> id
    add_bos: bool | None
    add_eos: bool | None
    chat_template: Any = None           # str, or a list of named templates

    def write(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        if self.pre:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(list(self.tokens))
        writer.add_token_types([int(t) for t in self.token_types])
        if self.scores is not None:
            writer.add_token_scores(list(self.scores))
        if self.merges:
            writer.add_token_merges(list(self.merges))
        for typ, token_id in self.special_ids.items():
            writer.add_uint32(TOKENIZER_ID_KEYS[typ], token_id)
        if self.add_bos is not None:
            writer.add_add_bos_token(self.add_bos)
        if self.add_eos is not None:
            writer.add_add_eos_token(self.add_eos)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def read_tokenizer(folder: str | Path, vocab_size: int) -> GGUFTokenizer:
    """The GGUF tokenizer of a model folder whose embedding has ``vocab_size`` rows."""
    folder = Path(folder)
    tokenizer_json = _load_json(folder / "tokenizer.json")
    bpe = (tokenizer_json or {}).get("model", {})
    byte_level = (bpe.get("type") == "BPE" and not bpe.get("byte_fallback", False)
                  and (tokenizer_json.get("decoder") or {}).get("type") == "ByteLevel")
    if (folder / "tokenizer.model").is_file() and not byte_level:
        model, tokens, types, scores, merges = _sentencepiece(folder)
        pre = None
    elif tokenizer_json is not None and bpe.get("type") == "BPE":
        if byte_level:
            model, pre = "gpt2", _pre_name(tokenizer_json)
        else:
            model, pre = "llama", None
        tokens, types, scores, merges = _bpe(tokenizer_json, byte_level)
    else:
        raise InputError(f"{folder} has no tokenizer lmexport can write to GGUF",
                         hint="expected tokenizer.model (SentencePiece) or a BPE tokenizer.json")

    if len(tokens) > vocab_size:
        raise InputError(f"the tokenizer in {folder} has {len(tokens)} tokens but the model's embedding "
                         f"has only {vocab_size} rows", hint="the tokenizer does not belong to this model")
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(TokenType.UNUSED)
        if scores is not None:
            scores.append(-1000.0)

    special = gguf.SpecialVocab(folder, load_merges=False, special_token_types=SPECIAL_TYPES, n_vocab=vocab_size)
    add = special.add_special_token
    return GGUFTokenizer(model=model, pre=pre, tokens=tuple(tokens), token_types=tuple(int(t) for t in types),
                         scores=tuple(scores) if scores is not None else None,
                         merges=tuple(merges) if merges else None,
                         special_ids={k: int(v) for k, v in special.special_token_ids.items()},
                         add_bos=add.get("bos"), add_eos=add.get("eos"), chat_template=special.chat_template)


def _load_json(path: Path) -> dict | None:
    return read_json_object(path) if path.is_file() else None


def _sentencepiece(folder: Path):
    try:
        vocab = gguf.vocab.SentencePieceVocab(folder)
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot read {folder / 'tokenizer.model'} ({exc})") from exc
    tokens, types, scores = [], [], []
    for text, score, toktype in vocab.all_tokens():
        tokens.append(text.decode("utf-8", errors="replace"))
        scores.append(float(score))
        types.append(toktype)
    return "llama", tokens, types, scores, None


def _bpe(tokenizer_json: dict, byte_level: bool):
    """Tokens by id, types, scores (byte-fallback only) and merges from a BPE tokenizer.json."""
    model = tokenizer_json["model"]
    by_id: dict[int, str] = {int(i): t for t, i in model.get("vocab", {}).items()}
    types: dict[int, TokenType] = {}
    for added in tokenizer_json.get("added_tokens") or []:
        by_id[int(added["id"])] = added["content"]
        types[int(added["id"])] = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
    unk = model.get("unk_token")
    n = max(by_id) + 1 if by_id else 0
    tokens, type_list = [], []
    for i in range(n):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            type_list.append(TokenType.UNUSED)
            continue
        tokens.append(text)
        if not byte_level and text == unk:
            type_list.append(TokenType.UNKNOWN)
        elif not byte_level and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            type_list.append(TokenType.BYTE)
        else:
            type_list.append(types.get(i, TokenType.NORMAL))
    scores = None if byte_level else [-float(i) for i in range(n)]
    return tokens, type_list, scores, _merges(model.get("merges") or [])


def _merges(merges: list) -> list[str]:
    """tokenizer.json merges ("a b" strings or [a, b] pairs) as GGUF's "a b" strings."""
    out = []
    for merge in merges:
        if isinstance(merge, str):
            out.append(merge)
        elif isinstance(merge, list) and len(merge) == 2:
            # a space inside a part is written as U+0120+..., as gguf.SpecialVocab does
            out.append(" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in merge))
        else:
            raise InputError(f"unknown merges format in tokenizer.json: {merge!r}")
    return out


def _pre_name(tokenizer_json: dict) -> str:
    """llama.cpp's pre-tokenizer name: "gpt-2" for GPT-2's ByteLevel regex split."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    log.warning("tokenizer.json pre-tokenizer %s is not GPT-2's; writing tokenizer.ggml.pre=default",
                pre.get("type"))
    return "default"

