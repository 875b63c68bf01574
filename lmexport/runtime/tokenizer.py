"""Text <-> token ids: the one tokenizer loader of lmexport (torch- and transformers-free).

**The BOS/EOS rule.** Ids are ``tokenizer.json``'s own encoding with its
post-processor (``add_special_tokens=True``): whatever BOS/EOS the
post-processor adds, nothing else. That is the rule Hugging Face applies to a
folder whose post-processor states it. Source checkpoint folders need not state
it (transformers' rule then depends on its version and the tokenizer class), so
everything that reads a *source* folder (exporters, parity, perplexity,
convert) goes through ``lmexport.modeling.tokenizer.resolve_tokenizer``, which
asks the installed transformers and builds this class from a ``tokenizer.json``
whose post-processor says what transformers does; the ONNX exporter writes those
resolved files, so an exported folder states its rule and the runtime (here,
without transformers) encodes exactly as ``AutoTokenizer.from_pretrained(src)``.

A rendered chat template is encoded *without* special tokens, as transformers'
``apply_chat_template(tokenize=True)`` does: a template writes its own BOS.

**Files.** ``tokenizer_config.json`` (optional) must be a JSON object: special
token names and the chat template. The chat template is ``chat_template.jinja``
if present (it wins, as in transformers), else ``chat_template`` in the config (a
string, or a list of named templates: "default" is used);
``additional_chat_templates/*.jinja`` add named templates. Every file read must
lie inside the folder (a symlink out of it is refused, except into the Hugging Face
cache's ``blobs`` beside a ``snapshots/<revision>`` folder). Templates render through
``lmexport.runtime.chat_template`` (sandboxed, time and size limits).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from lmexport.jsonio import read_json_object
from lmexport.safe_paths import link_problem
from lmexport.errors import ArtifactError, GenerationError
from lmexport.runtime.chat_template import TemplateLimits, render_chat_template

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
TEMPLATE_DIR = "additional_chat_templates"
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it (a string, or an AddedToken dict)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def inside(folder: Path, name: str) -> Path | None:
    """``folder / name`` if it is a file inside ``folder``; None if absent.

    Inside means: ``name`` is a relative path without "..", and the file's real path (links
    followed) lies in the folder, or in the ``blobs`` folder of the Hugging Face cache repository
    whose ``snapshots/<revision>`` the folder is (the cache links every file there)."""
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ArtifactError(f"{name!r} names a file outside {folder}")
    path = folder / name
    if not path.is_file():
        return None
    problem = link_problem(folder, path)
    if problem:
        raise ArtifactError(f"{folder}: {problem}", hint="a folder's files must lie inside it; copy the file "
                                                         "into the folder instead of linking it")
    return path


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read ({exc.strerror or exc})") from None


def read_tokenizer_config(folder: str | Path) -> dict:
    """tokenizer_config.json as a dict ({} when absent); a corrupt or non-object file is an ArtifactError."""
    folder = Path(folder)
    path = inside(folder, TOKENIZER_CONFIG)
    if path is None:
        return {}
    return read_json_object(path, ArtifactError)      # bounded in size and depth, like every folder JSON


def chat_templates(folder: str | Path, config: dict) -> dict[str, str]:
    """The folder's chat templates by name ("default" first when there is one)."""
    folder = Path(folder)
    value = config.get("chat_template")
    templates: dict[str, str] = {}
    if isinstance(value, str):
        templates["default"] = value
    elif isinstance(value, list):
        for entry in value:
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                    and isinstance(entry.get("template"), str)):
                raise ArtifactError(f"{folder / TOKENIZER_CONFIG}: chat_template list entries must be "
                                    "{\"name\": ..., \"template\": ...}")
            templates[entry["name"]] = entry["template"]
    elif value is not None:
        raise ArtifactError(f"{folder / TOKENIZER_CONFIG}: chat_template must be a string or a list of named "
                            f"templates, not a {type(value).__name__}")
    extra_dir = folder / TEMPLATE_DIR
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            if inside(folder, f"{TEMPLATE_DIR}/{path.name}") is not None:
                templates[path.stem] = read_text(path)
    path = inside(folder, TEMPLATE_FILE)
    if path is not None:
        templates["default"] = read_text(path)
    return templates


def read_tokenizer_json(folder: str | Path) -> Tokenizer:
    folder = Path(folder)
    path = inside(folder, TOKENIZER_JSON)
    if path is None:
        raise ArtifactError(f"{folder} has no {TOKENIZER_JSON}",
                            hint="export the folder from a checkpoint that has tokenizer files")
    return tokenizer_from_json(read_text(path), str(path))


def tokenizer_from_json(text: str, where: str) -> Tokenizer:
    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises a bare Exception for a bad file
        raise ArtifactError(f"{where} cannot be read as a tokenizer ({' '.join(str(exc).split())[:120]})") from None


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` whose post-processor is the BOS/EOS rule, with special tokens and chat templates."""

    def __init__(self, tokenizer: Tokenizer, config: dict | None = None, templates: dict[str, str] | None = None,
                 *, eos_token_ids=(), template_limits: TemplateLimits = TemplateLimits()):
        self.tokenizer = tokenizer
        self.config = dict(config or {})
        self.templates = dict(templates or {})
        self.template_limits = template_limits
        self.bos_token_id = self._id(self.config.get("bos_token"))
        eos = list(eos_token_ids) or [i for i in [self._id(self.config.get("eos_token"))] if i is not None]
        self.eos_token_ids = eos
        self.pad_token_id = self._id(self.config.get("pad_token"))
        # What the post-processor adds around an empty text: [BOS] [EOS], either, or nothing.
        added = tokenizer.encode("", add_special_tokens=True).ids
        self.add_bos = self.bos_token_id is not None and added[:1] == [self.bos_token_id]
        self.add_eos = bool(eos) and added[-1:] == eos[:1] and len(added) > int(self.add_bos)

    @classmethod
    def from_folder(cls, folder: str | Path, *, eos_token_ids=()) -> "TextTokenizer":
        """The tokenizer of a folder whose tokenizer.json states its rule (an exported folder)."""
        folder = Path(folder)
        tokenizer = read_tokenizer_json(folder)
        config = read_tokenizer_config(folder)
        return cls(tokenizer, config, chat_templates(folder, config), eos_token_ids=eos_token_ids)

    def _id(self, token) -> int | None:
        text = token_text(token)
        return self.tokenizer.token_to_id(text) if text else None

    @property
    def chat_template(self) -> str | None:
        return self.templates.get("default")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``: those of ``AutoTokenizer(folder)(text).input_ids`` (see the module docstring)."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def token_text(self, token_id: int) -> str:
        """The text a special token stands for in a rendered template (e.g. ``</s>``)."""
        return self.tokenizer.id_to_token(token_id) or ""

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The rendered conversation (text); encode it with ``add_special_tokens=False``."""
        if not self.chat_template:
            raise GenerationError("--chat was given, but the model folder has no chat template",
                                  hint="drop --chat to use the prompt as it is")
        variables = {key: token_text(self.config.get(key)) or "" for key in SPECIAL_TOKEN_KEYS}
        variables.update(messages=messages, add_generation_prompt=add_generation_prompt)
        return render_chat_template(self.chat_template, variables, named=self.templates,
                                    limits=self.template_limits)
