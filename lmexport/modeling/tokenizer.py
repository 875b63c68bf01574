"""A source checkpoint folder's tokenizer, resolved the way the installed transformers reads it.

transformers' BOS/EOS rule depends on its version and the tokenizer class
(transformers 5 ignores ``add_bos_token`` in tokenizer_config.json when a
tokenizer.json is present and uses its post-processor; its ``LlamaTokenizer``
built from ``tokenizer.model`` honours ``add_bos_token``, default false; 4.x
differed again). Rather than emulate that, ``resolve_tokenizer`` asks it:
``AutoTokenizer.from_pretrained(folder).backend_tokenizer`` is a
``tokenizers.Tokenizer`` whose post-processor states what transformers adds. Its
JSON becomes the tokenizer of everything lmexport does with the folder:

* parity, perplexity and convert encode with it (``checkpoint_tokenizer``);
* the ONNX exporter writes it as the folder's tokenizer.json, and a
  tokenizer_config.json with ``add_bos_token`` / ``add_eos_token`` stated to match
  (``ResolvedTokenizer.write``), so the torch-free runtime, which encodes with
  the file's own post-processor, gives transformers' ids by construction;
* the GGUF exporter takes its vocabulary, merges and pre-tokenizer from the same
  JSON and ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` from the same rule.

Resolution checks what it relies on and fails loudly (``ExportError``) otherwise:
every token of the folder's own tokenizer.json keeps its id, and the resolved
JSON, loaded back by ``tokenizers``, encodes a mixed probe text exactly as
transformers does.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from lmexport.errors import ExportError, InputError
from lmexport.runtime.tokenizer import (SPECIAL_TOKEN_KEYS, TOKENIZER_CONFIG, TOKENIZER_JSON, TextTokenizer,
                                        chat_templates, inside, read_text, read_tokenizer_config,
                                        token_text, tokenizer_from_json)

log = logging.getLogger(__name__)

# Code, accents, CJK, emoji, runs of spaces and tabs, digits, a newline run.
PROBE_TEXT = ("def f(x):\n    return x  +  1.25e3  # café naïve Ångström\n\n\t東京 🙂🚀  12345678 "
              "don't   CAPS 'll\r\n end")
SOURCE_FILES = (TOKENIZER_JSON, "tokenizer.model")


@dataclass(frozen=True)
class ResolvedTokenizer:
    folder: Path
    tokenizer_json: str                  # tokenizer.json text; its post-processor states the rule
    config: dict                         # tokenizer_config.json, add_bos_token / add_eos_token explicit
    templates: dict[str, str] = field(default_factory=dict)
    resolved_by: str = ""                # "transformers 5.x.y"

    def text_tokenizer(self, *, eos_token_ids=()) -> TextTokenizer:
        tokenizer = tokenizer_from_json(self.tokenizer_json, f"the resolved tokenizer of {self.folder}")
        return TextTokenizer(tokenizer, self.config, self.templates, eos_token_ids=eos_token_ids)

    @property
    def json(self) -> dict:
        return json.loads(self.tokenizer_json)

    @property
    def add_bos(self) -> bool:
        return bool(self.config["add_bos_token"])

    @property
    def add_eos(self) -> bool:
        return bool(self.config["add_eos_token"])

    def write(self, folder: Path) -> list[Path]:
        """Write tokenizer.json and tokenizer_config.json (the rule stated in both) into ``folder``."""
        folder = Path(folder)
        (folder / TOKENIZER_JSON).write_text(self.tokenizer_json, encoding="utf-8")
        (folder / TOKENIZER_CONFIG).write_text(json.dumps(self.config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
        return [folder / TOKENIZER_JSON, folder / TOKENIZER_CONFIG]


def ship_tokenizer_files(folder: Path, tokenizer: "ResolvedTokenizer | None", files: list[Path]) -> list[Path]:
    """Everything an export ships of the checkpoint's tokenizer, written into ``folder``: the stated
    tokenizer.json and tokenizer_config.json (``ResolvedTokenizer.write``), then the checkpoint's other
    tokenizer files (``files``: the chat template, generation_config.json, ...) copied after a check
    that each is what its name says. Every exporter (ONNX folder, .pte) ships the same set."""
    from lmexport.modeling.folder_files import copy_verified

    written = tokenizer.write(folder) if tokenizer is not None else []
    names = {p.name for p in written}
    for src in files:
        if src.name not in names:
            copy_verified(src, folder / src.name)
            written.append(folder / src.name)
    return written


def has_tokenizer(folder: str | Path) -> bool:
    return any(inside(Path(folder), name) is not None for name in SOURCE_FILES)


def resolve_tokenizer(folder: str | Path) -> ResolvedTokenizer:
    """What ``AutoTokenizer.from_pretrained(folder)`` tokenizes with, as tokenizers JSON plus a stated rule."""
    folder = Path(folder)
    config = read_tokenizer_config(folder)          # a corrupt file is an ArtifactError before transformers sees it
    templates = chat_templates(folder, config)
    if not has_tokenizer(folder):
        raise InputError(f"{folder} has no tokenizer ({' or '.join(SOURCE_FILES)})",
                         hint="copy the model's tokenizer files into the folder")
    hf = _auto_tokenizer(folder)
    import transformers

    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise InputError(f"transformers {transformers.__version__} reads {folder}'s tokenizer only as a slow "
                         f"({type(hf).__name__}) tokenizer, which lmexport cannot export",
                         hint="add a tokenizer.json (save the tokenizer with a fast tokenizer class)")
    text = backend.to_str()
    resolved_by = f"transformers {transformers.__version__}"
    resolved = tokenizer_from_json(text, f"{resolved_by}'s tokenizer of {folder}")
    _check_ids_kept(folder, resolved)
    want = hf(PROBE_TEXT).input_ids
    got = resolved.encode(PROBE_TEXT, add_special_tokens=True).ids
    if want != got:
        raise ExportError(f"{resolved_by} tokenizes a probe text differently from its own backend tokenizer "
                          f"for {folder} (first difference at token {_first_difference(want, got)})",
                          hint="this tokenizer class does more than its tokenizers backend; it is not supported")
    stated = _stated_config(config, hf, TextTokenizer(resolved, _with_specials(config, hf)))
    _warn_on_changed_rule(folder, config, stated, resolved_by)
    return ResolvedTokenizer(folder, text, stated, templates, resolved_by)


def checkpoint_tokenizer(folder: str | Path, *, eos_token_ids=()) -> TextTokenizer:
    """The one tokenizer for a source folder: transformers' ids (see the module docstring)."""
    return resolve_tokenizer(folder).text_tokenizer(eos_token_ids=eos_token_ids)


def folder_tokenizer(folder: str | Path) -> TextTokenizer:
    """An exported folder (lmexport.json beside it) states its rule; any other folder is resolved."""
    folder = Path(folder)
    if (folder / "lmexport.json").is_file():
        return TextTokenizer.from_folder(folder)
    return checkpoint_tokenizer(folder)


# ---------------------------------------------------------------------------- internals
def _auto_tokenizer(folder: Path):
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise InputError("reading a checkpoint's tokenizer needs transformers",
                         hint="pip install 'lmexport[export]'") from exc
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()   # "model of type liquid_metal ..." is expected here
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError, ImportError) as exc:
        raise InputError(f"transformers cannot read the tokenizer in {folder} "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})",
                         hint="check tokenizer.json / tokenizer.model / tokenizer_config.json") from None
    finally:
        transformers.logging.set_verbosity(verbosity)


def _check_ids_kept(folder: Path, resolved) -> None:
    """Every token of the folder's own tokenizer.json must keep its id in the resolved tokenizer."""
    path = inside(folder, TOKENIZER_JSON)
    if path is None:
        return
    original = tokenizer_from_json(read_text(path), str(path)).get_vocab(with_added_tokens=True)
    now = resolved.get_vocab(with_added_tokens=True)
    moved = [f"{t!r} {i} -> {now.get(t)}" for t, i in sorted(original.items(), key=lambda x: x[1])
             if now.get(t) != i]
    if moved:
        raise ExportError(f"transformers gives {len(moved)} token(s) of {path} another id: {', '.join(moved[:5])}",
                          hint="the tokenizer files disagree with each other; fix tokenizer_config.json")


def _with_specials(config: dict, hf) -> dict:
    """The config with special tokens that transformers found elsewhere (special_tokens_map.json) filled in."""
    out = dict(config)
    for key in SPECIAL_TOKEN_KEYS:
        value = getattr(hf, key, None)
        if token_text(out.get(key)) is None and isinstance(value, str) and value:
            out[key] = value
    return out


def _stated_config(config: dict, hf, tok: TextTokenizer) -> dict:
    out = _with_specials(config, hf)
    out["add_bos_token"] = tok.add_bos
    out["add_eos_token"] = tok.add_eos
    return out


def _warn_on_changed_rule(folder: Path, before: dict, after: dict, resolved_by: str) -> None:
    for key in ("add_bos_token", "add_eos_token"):
        if key in before and bool(before[key]) != after[key]:
            log.warning("%s/tokenizer_config.json says %s: %s, but %s does %s; lmexport follows transformers",
                        folder, key, json.dumps(before[key]), resolved_by,
                        ("add it" if after[key] else "not add it"))


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
