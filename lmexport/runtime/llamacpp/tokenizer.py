"""A GGUF's own tokenizer, as llama.cpp runs it, behind the tokenizer the generation loop and chat use.

Text is encoded and decoded by llama.cpp from the vocabulary in the GGUF; the chat template
(``tokenizer.chat_template`` in the GGUF) is rendered by lmexport's bounded renderer
(``lmexport.runtime.chat_template``), as for an ONNX folder.
"""
from __future__ import annotations

from typing import Sequence

from gguf import Keys

from lmexport.errors import GenerationError


class LlamaCppTokenizer:
    def __init__(self, engine):
        self.engine = engine
        self.llm = engine.llm
        self.chat_template = self.llm.metadata.get(Keys.Tokenizer.CHAT_TEMPLATE) or None
        self.eos_token_ids = set(engine.info.eos_token_ids)
        self.pad_token_id = engine.info.pad_token_id

    @property
    def vocab_size(self) -> int:
        return self.engine.n_vocab

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """``add_special_tokens``: the BOS the GGUF asks for (``tokenizer.ggml.add_bos_token``)."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True))

    def decode(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        """A token as text, special tokens included (``</s>``)."""
        if token_id < 0:
            return ""
        return self.llm.detokenize([int(token_id)], special=True).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self.chat_template is None:
            raise GenerationError(f"--chat was given, but {self.engine.path} has no chat template (tokenizer.chat_template)",
                                  hint="export it from a model folder whose tokenizer has one, or drop --chat")
        from lmexport.runtime.chat_template import render_chat_template

        bos, eos = self.llm.token_bos(), self.llm.token_eos()
        return render_chat_template(self.chat_template, {"messages": messages,
                                                         "add_generation_prompt": add_generation_prompt,
                                                         "bos_token": self.token_text(bos),
                                                         "eos_token": self.token_text(eos)})
