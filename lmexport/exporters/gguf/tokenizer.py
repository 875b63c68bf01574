"""The tokenizer metadata of a GGUF file, such that llama.cpp tokenizes like Hugging Face.

Everything starts from the folder's tokenizer as transformers reads it
(``lmexport.modeling.tokenizer.resolve_tokenizer``: its tokenizers JSON and its
BOS/EOS rule). Three kinds are written:

* **SentencePiece with tokenizer.model** (Llama/TinyLlama): ``tokenizer.ggml.model =
  llama``; pieces and scores from ``tokenizer.model``, so llama.cpp's score-driven
  merges are SentencePiece's own;
* **byte-fallback BPE tokenizer.json** (a "fast" Llama tokenizer without its
  ``.model``): ``llama`` with scores in the merge order of tokenizer.json (the
  token a merge of rank r makes scores -r), so llama.cpp, which merges the
  highest-scoring pair first, merges in that order;
* **byte-level BPE tokenizer.json** (GPT-2 style): ``gpt2`` with the merges and
  ``tokenizer.ggml.pre`` from ``pretokenizer.choose`` (identified, or
  ``--tokenizer-pre``; never a silent default).

Token types follow llama.cpp's converter: in a SentencePiece vocabulary the unknown
token is UNKNOWN and ``<0xNN>`` pieces are BYTE; added tokens CONTROL when special (or
looking special: ``<|...|>``) and USER_DEFINED otherwise, rows past the
vocabulary ``[PAD{id}]`` UNUSED (a vocabulary longer than the embedding is an
error). ``add_bos_token`` / ``add_eos_token`` are the resolved rule;
``add_space_prefix`` (llama only) says whether the tokenizer prepends "▁".
Special-token ids come from the resolved tokenizer_config, else from config.json
(``bos_token_id`` ...), as llama.cpp's converter falls back to.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
from gguf import TokenType

from lmexport.errors import InputError
from lmexport.exporters.gguf import pretokenizer
from lmexport.formats.gguf import TOKENIZER_ID_KEYS
from lmexport.modeling.checkpoint import read_config_dict
from lmexport.modeling.tokenizer import ResolvedTokenizer, resolve_tokenizer
from lmexport.runtime.tokenizer import inside, token_text

log = logging.getLogger(__name__)
SPECIAL_TYPES = tuple(TOKENIZER_ID_KEYS)   # bos, eos, unk, pad
SPACE = "\u2581"                           # SentencePiece's "▁"
ADDED_SCORE = -1000.0                      # llama.cpp's converter's score for added and padding tokens


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
    add_space_prefix: bool | None = None   # llama only

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
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def read_tokenizer(folder: str | Path, vocab_size: int, *, pre: str | None = None) -> GGUFTokenizer:
    """The GGUF tokenizer of a model folder whose embedding has ``vocab_size`` rows.

    ``pre`` overrides the identified ``tokenizer.ggml.pre`` (byte-level BPE only).
    """
    folder = Path(folder)
    resolved = resolve_tokenizer(folder)
    tj = resolved.json
    bpe = tj.get("model") or {}
    if bpe.get("type") != "BPE":
        raise InputError(f"{folder}'s tokenizer is a {bpe.get('type')} model; lmexport writes BPE and "
                         "SentencePiece-BPE vocabularies to GGUF", hint="this tokenizer cannot be exported")
    byte_level = not bpe.get("byte_fallback", False) and (tj.get("decoder") or {}).get("type") == "ByteLevel"
    if pre is not None and not byte_level:
        raise InputError(f"{pretokenizer.PRE_FLAG} applies to byte-level BPE vocabularies; {folder}'s is "
                         "SentencePiece-style", hint=f"drop {pretokenizer.PRE_FLAG}")
    sp_model = inside(folder, "tokenizer.model")
    unk = bpe.get("unk_token") or token_text(resolved.config.get("unk_token"))
    if byte_level:
        model, name = "gpt2", pretokenizer.choose(tj, pre, f"{folder}'s tokenizer.json")
        tokens, types = _vocab(tj, unk, byte_level=True)
        scores = None
    else:
        model, name = "llama", None
        tokens, types = _vocab(tj, unk, byte_level=False)
        scores = _sentencepiece_scores(sp_model, tokens) if sp_model else _merge_scores(tj, tokens, types)
    merges = _merges(bpe.get("merges") or []) if byte_level else None

    if len(tokens) > vocab_size:
        raise InputError(f"the tokenizer in {folder} has {len(tokens)} tokens but the model's embedding "
                         f"has only {vocab_size} rows", hint="the tokenizer does not belong to this model")
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(TokenType.UNUSED)
        if scores is not None:
            scores.append(ADDED_SCORE)

    return GGUFTokenizer(model=model, pre=name, tokens=tuple(tokens), token_types=tuple(int(t) for t in types),
                         scores=tuple(scores) if scores is not None else None,
                         merges=tuple(merges) if merges else None,
                         special_ids=_special_ids(folder, resolved, vocab_size),
                         add_bos=resolved.add_bos, add_eos=resolved.add_eos,
                         chat_template=_chat_template(resolved.templates),
                         add_space_prefix=None if byte_level else _prepends_space(tj))


# ---------------------------------------------------------------------------- vocabulary
def looks_special(text: str) -> bool:
    """llama.cpp's converter's test for added tokens that are control tokens though not marked special."""
    return (text in ("<pad>", "<mask>") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _is_byte_piece(text: str) -> bool:
    return len(text) == 6 and text.startswith("<0x") and text.endswith(">")


def _vocab(tj: dict, unk: str | None, *, byte_level: bool) -> tuple[list[str], list[TokenType]]:
    """Tokens by id and their llama.cpp types, from the resolved tokenizer.json."""
    model = tj["model"]
    by_id: dict[int, str] = {int(i): t for t, i in (model.get("vocab") or {}).items()}
    added: dict[int, TokenType] = {}
    for entry in tj.get("added_tokens") or []:
        i, text = int(entry["id"]), entry["content"]
        by_id[i] = text
        if entry.get("special") or looks_special(text):
            added[i] = TokenType.CONTROL
        else:
            added[i] = TokenType.USER_DEFINED
            if not byte_level:
                by_id[i] = text.replace(SPACE, " ")   # llama.cpp expects user-defined spaces pre-normalised
    n = max(by_id) + 1 if by_id else 0
    tokens, types = [], []
    for i in range(n):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        tokens.append(text)
        if text == unk and unk is not None and not byte_level:   # byte-level: CONTROL, as the converter's
            types.append(TokenType.UNKNOWN)
        elif not byte_level and _is_byte_piece(text) and i not in added:
            types.append(TokenType.BYTE)
        else:
            types.append(added.get(i, TokenType.NORMAL))
    return tokens, types


def _sentencepiece_scores(path: Path, tokens: list[str]) -> list[float]:
    """Scores from tokenizer.model, whose pieces must be the resolved vocabulary's first tokens."""
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise InputError(f"cannot read {path} ({' '.join(str(exc).split())[:120]})") from None
    n = sp.get_piece_size()
    differ = [i for i in range(min(n, len(tokens))) if sp.id_to_piece(i) != tokens[i]
              and tokens[i].replace(" ", SPACE) != sp.id_to_piece(i)]
    if n > len(tokens) or differ:
        raise InputError(f"{path} does not match the folder's tokenizer.json "
                         f"(piece {differ[0] if differ else n}: {sp.id_to_piece(differ[0]) if differ else ''!r})",
                         hint="the tokenizer files come from different models")
    return [float(sp.get_score(i)) for i in range(n)] + [ADDED_SCORE] * (len(tokens) - n)


def _merge_scores(tj: dict, tokens: list[str], types: list[TokenType]) -> list[float]:
    """-rank of the first merge that makes each token; tokens no merge makes score below every merge."""
    merges = _merges(tj["model"].get("merges") or [])
    rank: dict[str, int] = {}
    for r, merge in enumerate(merges):
        left, _, right = merge.partition(" ")
        rank.setdefault(left + right, r)
    floor = -float(len(merges))
    return [ADDED_SCORE if types[i] in (TokenType.CONTROL, TokenType.USER_DEFINED) else
            -float(rank[t]) if t in rank else floor - i for i, t in enumerate(tokens)]


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


def _prepends_space(tj: dict) -> bool:
    """Whether the tokenizer puts "▁" before the text (a Prepend normalizer, or Metaspace's prepend_scheme)."""
    for step in pretokenizer.steps(tj.get("normalizer")):
        if step.get("type") == "Prepend" and step.get("prepend") == SPACE:
            return True
    for step in pretokenizer.steps(tj.get("pre_tokenizer")):
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") in ("always", "first") and step.get("add_prefix_space", True)
    return False


# ---------------------------------------------------------------------------- specials
def _special_ids(folder: Path, resolved: ResolvedTokenizer, vocab_size: int) -> dict[str, int]:
    tok = resolved.text_tokenizer()
    ids = {}
    for typ in SPECIAL_TYPES:
        text = token_text(resolved.config.get(f"{typ}_token"))
        if text is None and typ == "unk":
            text = (resolved.json.get("model") or {}).get("unk_token")
        token_id = tok.tokenizer.token_to_id(text) if text else None
        if token_id is not None:
            ids[typ] = int(token_id)
    config = read_config_dict(folder) if (folder / "config.json").is_file() else {}
    for typ in SPECIAL_TYPES:            # ids the tokenizer files do not name: config.json's, as llama.cpp's converter
        value = config.get(f"{typ}_token_id")
        value = value[0] if isinstance(value, list) and value else value
        if typ not in ids and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab_size:
            ids[typ] = value
    return ids


def _chat_template(templates: dict[str, str]):
    if not templates:
        return None
    if list(templates) == ["default"]:
        return templates["default"]
    return [{"name": name, "template": text} for name, text in templates.items()]
