"""An interactive chat that keeps its state between turns.

Each turn renders the whole conversation with the chat template and feeds the
model only the tokens it has not seen yet; the keys, values, convolution
windows and context sums of earlier turns stay in the state. If the new
rendering does not extend what was fed (a template that rewrites history), the
state is rebuilt from the full conversation.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import GenerationError
from .generator import Generator
from .sampling import SamplingParams, choose


class ChatSession:
    def __init__(self, generator: Generator, *, max_new_tokens: int = 128,
                 sampling: SamplingParams | None = None, system: str | None = None):
        self.gen = generator
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling or SamplingParams()
        self.rng = np.random.default_rng(self.sampling.seed)
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.fed: list[int] = []
        self.state = None
        self.templated = bool(generator.tokenizer.chat_template)

    def _conversation_ids(self) -> list[int]:
        tok = self.gen.tokenizer
        if self.templated:
            return tok.encode(tok.apply_chat_template(self.messages))
        return tok.encode("".join(m["content"] for m in self.messages))

    def _feed(self, new: list[int]):
        mask = np.ones((1, len(self.fed) + len(new)), dtype=np.int64)
        ids = np.asarray([new], dtype=np.int64)
        pos = np.arange(len(self.fed), len(self.fed) + len(new), dtype=np.int64)[None]
        logits, self.state = self.gen.session.step(ids, mask, pos, self.state)
        self.fed += new
        return logits[:, -1]

    def send(self, text: str) -> Iterator[str]:
        """Add a user message; yield the reply as it is produced."""
        self.messages.append({"role": "user", "content": text if self.templated else text + "\n"})
        ids = self._conversation_ids()
        if self.state is None or ids[:len(self.fed)] != self.fed:
            self.fed, self.state = [], self.gen.session.zero_state(1)
        new = ids[len(self.fed):]
        if len(ids) + self.max_new_tokens > self.gen.context_length:
            raise GenerationError(f"the conversation has {len(ids)} tokens; the model's context is "
                                  f"{self.gen.context_length}", hint="start a new chat")
        logits = self._feed(new)
        reply: list[int] = []
        sent = 0
        for _ in range(self.max_new_tokens):
            token = int(choose(logits, self.sampling, self.rng, [set(self.fed)])[0])
            if token in self.gen.eos_token_ids:
                self.fed.append(token)
                break
            reply.append(token)
            text = self.gen.tokenizer.decode(reply)
            if not text.endswith("\ufffd") and len(text) > sent:
                yield text[sent:]
                sent = len(text)
            logits = self._feed([token])
        text = self.gen.tokenizer.decode(reply)
        if len(text) > sent:
            yield text[sent:]
        self.messages.append({"role": "assistant", "content": text})
