"""An interactive chat that keeps the model's state between turns, on any engine (``lmexport.engine``).

The one chat session of lmexport: ``lmexport chat`` runs it on an ONNX folder and on a GGUF
file alike; the state lives in the engine (``Engine.step`` carries it).

The state (keys and values, convolution windows, context sums) of every earlier
turn stays; a turn feeds the model only the tokens of the text it adds. That
text is the difference between the conversation rendered with the chat
template now and the text already fed (the earlier prompt, the reply as
generated and its EOS). Invariant: ``fed`` holds exactly the token ids whose
effect is in ``state``, so a turn gives the tokens a fresh run over ``fed``
would give. If the template rewrites earlier turns (so the new rendering does
not extend what was fed), the state is rebuilt from the whole conversation.

Without a chat template the conversation is plain text: each message a line,
the replies as the model wrote them.
"""
from __future__ import annotations

import logging
from typing import Iterator

import numpy as np

from lmexport.errors import GenerationError
from lmexport.engine import Stats
from lmexport.runtime.chat_template import context_full_hint
from lmexport.runtime.generator import Generation, Generator, RowProgress
from lmexport.runtime.sampling import SamplingParams
from lmexport.runtime.batch import positions_from_mask

log = logging.getLogger(__name__)


class ChatSession:
    def __init__(self, generator: Generator, *, max_new_tokens: int = 128,
                 sampling: SamplingParams | None = None, system: str | None = None):
        self.gen = generator
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling or SamplingParams()
        self.system = system
        self.templated = bool(generator.tokenizer.chat_template)
        self.rebuilds = 0                 # turns whose rendering did not extend what was fed
        self.last_stats = Stats()
        self.reset()

    def reset(self) -> None:
        """Forget the conversation and the state (the seed starts over too)."""
        self.rng = np.random.default_rng(self.sampling.seed)
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self.fed: list[int] = []
        self.started = False              # whether the engine's state holds this conversation
        self._covered: list[str] = []     # texts whose tokens are all in the state, longest first

    # ------------------------------------------------------------ rendering
    def _render(self) -> str:
        if self.templated:
            return self.gen.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True)
        return "".join(m["content"] + ("" if m["role"] == "assistant" else "\n") for m in self.messages)

    def _new_tokens(self, rendered: str) -> tuple[bool, list[int]]:
        """(whether the state must be rebuilt, the token ids to feed now)."""
        if self.started:
            for covered in self._covered:
                if rendered.startswith(covered):
                    return False, self.gen.tokenizer.encode(rendered[len(covered):], add_special_tokens=False)
        # a template writes its own special tokens; plain turns are encoded like a plain prompt
        return True, self.gen.tokenizer.encode(rendered, add_special_tokens=not self.templated)

    # ------------------------------------------------------------ a turn
    def send(self, text: str) -> Iterator[str]:
        """Add a user message; yield the reply as it is produced."""
        self.messages.append({"role": "user", "content": text})
        try:
            rendered = self._render()
            rebuild, new = self._new_tokens(rendered)
            past = 0 if rebuild else len(self.fed)
            if not new:
                raise GenerationError("the chat template renders nothing for the new message")
            if past + len(new) + self.max_new_tokens > self.gen.context_length:
                raise GenerationError(f"the conversation would reach {past + len(new) + self.max_new_tokens} "
                                      f"tokens with this message and the reply; the model's context is "
                                      f"{self.gen.context_length}", hint=context_full_hint(self.messages))
        except Exception:
            self.messages.pop()
            raise
        if rebuild:
            if self.started:
                self.rebuilds += 1
                log.info("the chat template rewrote earlier turns; recomputing the state from the whole conversation")
            self.fed = []
            self.gen.engine.reset(1)
            self.started = True

        reply = Generation(text, prompt_tokens=len(new))
        row = RowProgress(reply, self.gen.tokenizer, self.fed + new, ())
        self.last_stats = Stats(prompt_tokens=len(new))
        seen = [set(self.fed) | set(new)]
        try:
            for response in self.gen.decode_loop(np.asarray([new], dtype=np.int64),
                                                 np.ones((1, past + len(new)), dtype=np.int64), [row],
                                                 self.sampling, [self.rng], seen, self.max_new_tokens,
                                                 self.last_stats):
                if response.text:
                    yield response.text
        except BaseException:
            self.started = False          # a turn cut short leaves the state unknown: rebuild next turn
            raise

        # every chosen token but the last is in the state; feed the last (the EOS too) to keep it whole
        ended_with_eos = reply.finish_reason == "eos"
        chosen = reply.token_ids + ([row.last] if ended_with_eos else [])
        total = past + len(new) + len(chosen)
        mask = np.ones((1, total), dtype=np.int64)
        self.gen.engine.step(np.asarray([[chosen[-1]]], dtype=np.int64), mask, positions_from_mask(mask, 1))
        self.fed += new + chosen
        self.messages.append({"role": "assistant", "content": reply.text})
        fed_text = rendered + reply.text
        self._covered = [fed_text]
        if ended_with_eos:   # a template that writes the EOS after a reply, and one that does not
            self._covered.insert(0, fed_text + self.gen.tokenizer.token_text(row.last))
