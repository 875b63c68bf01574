"""Text generation on ONNX Runtime: greedy or sampled, batched with left padding, streamed.

    from lmexport.runtime import Generator
    gen = Generator.from_folder("out/onnx")
    [result] = gen.generate("def read(path):", max_new_tokens=32)
    print(result.text, result.token_ids)
    for piece in gen.stream("def read(path):"):
        print(piece.text, end="", flush=True)

The streamed pieces of a prompt join to exactly the text ``generate`` returns:
text is released once it is complete UTF-8 and cannot be the start of a stop string.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import GenerationError
from .sampling import SamplingParams, choose
from .session import Session, positions_from_mask
from .tokenizer import TextTokenizer


@dataclass
class Generation:
    prompt: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    finish_reason: str = "length"      # "eos", "stop" or "length"


@dataclass(frozen=True)
class Piece:
    index: int                          # which prompt
    text: str


@dataclass
class Stats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    decode_tokens: int = 0               # tokens produced by decode calls (not by the prefill)
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0


class _Row:
    """One prompt's progress: its ids, its text and what of the text was released."""

    def __init__(self, gen: Generation, stops: Sequence[str]):
        self.gen, self.stops, self.sent, self.done = gen, stops, 0, False
        self.hold = max((len(s) for s in stops), default=1) - 1

    def update(self, tokenizer: TextTokenizer, eos_ids: set[int], token: int) -> str:
        """Add a token; return the newly released text."""
        if token in eos_ids:
            self.gen.finish_reason, self.done = "eos", True
        else:
            self.gen.token_ids.append(token)
        text = tokenizer.decode(self.gen.token_ids)
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            text, self.gen.finish_reason, self.done = text[:cut], "stop", True
        self.gen.text = text
        end = len(text) if self.done else len(text) - self.hold
        while end > self.sent and text[end - 1] == "\ufffd" and not self.done:
            end -= 1
        if end <= self.sent:
            return ""
        piece, self.sent = text[self.sent:end], end
        return piece

    def finish(self) -> str:
        self.done = True
        piece, self.sent = self.gen.text[self.sent:], len(self.gen.text)
        return piece


class Generator:
    def __init__(self, session: Session, tokenizer: TextTokenizer):
        self.session, self.tokenizer = session, tokenizer
        manifest = session.manifest
        self.context_length = int(manifest.config.get("max_position_embeddings", 2048))
        eos = manifest.tokenizer.get("eos_token_ids") or tokenizer.eos_token_ids
        self.eos_token_ids = {int(i) for i in eos}
        pad = manifest.tokenizer.get("pad_token_id", tokenizer.pad_token_id)
        self.pad_token_id = int(pad) if pad is not None else 0
        self.last_stats = Stats()

    @classmethod
    def from_folder(cls, folder: str | Path, *, device: str = "cpu", threads: int | None = None,
                    optimization: str = "all") -> "Generator":
        session = Session(folder, device=device, threads=threads, optimization=optimization)
        tok = session.manifest.tokenizer
        tokenizer = TextTokenizer(folder, bos_token_id=tok.get("bos_token_id"),
                                  eos_token_ids=tok.get("eos_token_ids") or ())
        return cls(session, tokenizer)

    @property
    def device(self) -> str:
        return self.session.device

    # ------------------------------------------------------------ prompts
    def encode_prompt(self, prompt: str, *, chat: bool = False, max_new_tokens: int = 0,
                      truncate: bool = False) -> list[int]:
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}]) if chat else prompt
        ids = self.tokenizer.encode(text)
        room = self.context_length - max_new_tokens
        if room < 1:
            raise GenerationError(f"--max-new-tokens {max_new_tokens} leaves no room in the model's context of "
                                  f"{self.context_length} tokens")
        if len(ids) > room:
            if not truncate:
                raise GenerationError(f"the prompt has {len(ids)} tokens; with {max_new_tokens} new tokens that "
                                      f"exceeds the model's context of {self.context_length}",
                                      hint="shorten the prompt, lower --max-new-tokens, or pass --truncate "
                                           "to keep the prompt's last tokens")
            ids = ids[len(ids) - room:]
        if not ids:
            raise GenerationError("the prompt is empty and the tokenizer adds no BOS token")
        return ids

    # ------------------------------------------------------------ generation
    def stream(self, prompts: str | Sequence[str], *, max_new_tokens: int = 64,
               sampling: SamplingParams | None = None, stop: Sequence[str] = (), chat: bool = False,
               truncate: bool = False, results: list[Generation] | None = None, **sampling_kw) -> Iterator[Piece]:
        """Yield text pieces as they are produced, for each prompt (``Piece.index``)."""
        single = isinstance(prompts, str)
        prompts = [prompts] if single else list(prompts)
        if not prompts:
            raise GenerationError("no prompt given")
        params = sampling or SamplingParams(**sampling_kw)
        encoded = [self.encode_prompt(p, chat=chat, max_new_tokens=max_new_tokens, truncate=truncate)
                   for p in prompts]
        gens = [Generation(p, prompt_tokens=len(ids)) for p, ids in zip(prompts, encoded)]
        if results is not None:
            results.extend(gens)
        rows = [_Row(g, [s for s in stop if s]) for g in gens]
        rng = np.random.default_rng(params.seed)
        seen = [set(ids) for ids in encoded]
        stats = self.last_stats = Stats(prompt_tokens=sum(map(len, encoded)))

        width = max(map(len, encoded))
        ids = np.full((len(encoded), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, toks in enumerate(encoded):
            ids[i, width - len(toks):], mask[i, width - len(toks):] = toks, 1
        state = self.session.zero_state(len(encoded))
        tokens = ids
        for step in range(max_new_tokens):
            started = time.perf_counter()
            logits, state = self.session.step(tokens, mask, positions_from_mask(mask, tokens.shape[1]), state)
            nxt = choose(logits[:, -1], params, rng, seen)
            elapsed = time.perf_counter() - started
            if step == 0:
                stats.prefill_s += elapsed
            else:
                stats.decode_s += elapsed
            for i, row in enumerate(rows):
                if row.done:
                    continue
                stats.new_tokens += 1
                stats.decode_tokens += step > 0
                seen[i].add(int(nxt[i]))
                piece = row.update(self.tokenizer, self.eos_token_ids, int(nxt[i]))
                if piece:
                    yield Piece(i, piece)
            if all(r.done for r in rows):
                break
            tokens = np.where([r.done for r in rows], self.pad_token_id, nxt)[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((len(rows), 1), dtype=np.int64)], axis=1)
        for i, row in enumerate(rows):
            piece = row.finish()
            if piece:
                yield Piece(i, piece)

    def generate(self, prompts: str | Sequence[str], **kwargs) -> list[Generation]:
        """Generate for one prompt or a batch; returns one Generation per prompt."""
        results: list[Generation] = []
        for _ in self.stream(prompts, results=results, **kwargs):
            pass
        return results
