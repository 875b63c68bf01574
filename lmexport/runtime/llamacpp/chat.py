"""A chat with a GGUF in llama.cpp: the conversation rendered with the GGUF's chat template.

The template (``tokenizer.chat_template`` in the GGUF) is rendered by lmexport's bounded renderer
(``lmexport.runtime.chat_template``), as ``lmexport chat`` does for an ONNX folder; without one the
turns are joined with newlines. Each turn feeds the whole rendered conversation as token ids:
llama-cpp-python keeps what it evaluated and re-evaluates only what does not extend it.
"""
from __future__ import annotations

from typing import Iterator

from lmexport.errors import GenerationError
from lmexport.runtime.llamacpp.engine import LlamaCppEngine
from lmexport.runtime.chat_template import context_full_hint

TEMPLATE_KEY = "tokenizer.chat_template"


class LlamaCppChat:
    def __init__(self, engine: LlamaCppEngine, *, max_new_tokens: int = 128, system: str | None = None,
                 **sampling):
        self.engine = engine
        self.max_new_tokens = max_new_tokens
        self.system = system
        self.sampling = sampling
        self.template = engine.llm.metadata.get(TEMPLATE_KEY) or None
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self.engine.llm.reset()

    def _special(self, token_id: int) -> str:
        return self.engine.llm.detokenize([token_id], special=True).decode("utf-8", errors="replace") \
            if token_id >= 0 else ""

    def render(self) -> str:
        if self.template is None:
            return "".join(m["content"] + ("" if m["role"] == "assistant" else "\n") for m in self.messages)
        from lmexport.runtime.chat_template import render_chat_template

        llm = self.engine.llm
        return render_chat_template(self.template, {"messages": self.messages, "add_generation_prompt": True,
                                                    "bos_token": self._special(llm.token_bos()),
                                                    "eos_token": self._special(llm.token_eos())})

    def send(self, text: str) -> Iterator[str]:
        """Add a user message; yield the reply as it is produced."""
        self.messages.append({"role": "user", "content": text})
        try:
            # a template writes its own special tokens; plain turns are encoded like a plain prompt
            ids = self.engine.tokenize(self.render(), add_bos=self.template is None)
            if len(ids) + self.max_new_tokens > self.engine.options.n_ctx:
                raise GenerationError(f"the conversation would reach {len(ids) + self.max_new_tokens} tokens "
                                      f"with this message and the reply; the context is {self.engine.options.n_ctx}",
                                      hint=context_full_hint(self.messages))
        except Exception:
            self.messages.pop()
            raise
        reply = []
        for piece in self.engine.generate(ids, max_tokens=self.max_new_tokens, **self.sampling):
            reply.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(reply)})
