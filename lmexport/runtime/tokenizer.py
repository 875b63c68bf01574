"""Text <-> token ids for an exported folder: ``tokenizer.json`` through ``tokenizers``,
special tokens and the chat template from ``tokenizer_config.json``.

The chat template (``chat_template`` in tokenizer_config.json, or a
``chat_template.jinja`` file beside it) comes from a model folder, so it is
rendered in Jinja's immutable sandbox: it can format messages, not reach Python
objects. jinja2 is a base dependency (small, pure Python) and is imported only
when a template is rendered.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from lmexport.errors import ArtifactError, GenerationError


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class TextTokenizer:
    def __init__(self, folder: str | Path, *, bos_token_id: int | None = None, eos_token_ids=()):
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ArtifactError(f"{folder} has no tokenizer.json", hint="export the folder from a checkpoint "
                                "that has tokenizer files")
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a bad file
            raise ArtifactError(f"{path} cannot be read ({str(exc)[:120]})") from exc
        config_path = folder / "tokenizer_config.json"
        self.config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        self.bos_token_id = bos_token_id if bos_token_id is not None else self._id(self.config.get("bos_token"))
        eos = list(eos_token_ids) or [i for i in [self._id(self.config.get("eos_token"))] if i is not None]
        self.eos_token_ids = eos
        self.pad_token_id = self._id(self.config.get("pad_token"))
        self.add_bos = bool(self.config.get("add_bos_token", self.bos_token_id is not None))
        self.chat_template = self.config.get("chat_template")
        if isinstance(self.chat_template, list):  # named templates: take "default"
            named = {t.get("name"): t.get("template") for t in self.chat_template if isinstance(t, dict)}
            self.chat_template = named.get("default")
        template_file = folder / "chat_template.jinja"
        if not self.chat_template and template_file.is_file():
            self.chat_template = template_file.read_text(encoding="utf-8")

    def _id(self, token) -> int | None:
        text = _token_text(token)
        return self.tokenizer.token_to_id(text) if text else None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``, with BOS first per add_bos_token (not twice: a chat
        template that writes the BOS token itself keeps just that one)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        add = self.add_bos if add_bos is None else add_bos
        if add and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids = [self.bos_token_id] + ids
        return ids

    def token_text(self, token_id: int) -> str:
        """The text a special token stands for in a rendered template (e.g. ``</s>``)."""
        return self.tokenizer.id_to_token(token_id) or ""

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise GenerationError("--chat was given, but tokenizer_config.json has no chat_template",
                                  hint="drop --chat to use the prompt as it is")
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):   # what Hugging Face templates call to reject a conversation
            raise GenerationError(f"the chat template rejects this conversation: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            template = env.from_string(self.chat_template)
            return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                   bos_token=_token_text(self.config.get("bos_token")) or "",
                                   eos_token=_token_text(self.config.get("eos_token")) or "")
        except TemplateError as exc:   # SecurityError (the sandbox said no) is a TemplateError too
            raise ArtifactError(f"the chat template in tokenizer_config.json fails: {exc}",
                                hint="fix the template, or drop --chat") from exc
