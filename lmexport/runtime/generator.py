"""Text generation on any engine (``lmexport.engine``): greedy or sampled, batched with left padding, streamed.

The one generation loop of lmexport: ``lmexport generate`` and ``lmexport chat`` run it on an ONNX
folder (ONNX Runtime), a GGUF file (llama.cpp) or any other registered engine, with the same
sampling (``sampling.py``), stop strings, statistics and response type.

    from lmexport.runtime import Generator
    gen = Generator.open("out/onnx")            # or "out/model.gguf"; Generator.from_folder for ONNX
    [result] = gen.generate("def read(path):", max_new_tokens=32)
    print(result.text, result.token_ids)
    for piece in gen.stream("def read(path):"):
        print(piece.text, end="", flush=True)

The streamed pieces of a prompt join to exactly the text ``generate`` returns:
text is released once it is complete UTF-8 and no stop string can still begin
in it. Each prompt of a batch gets the tokens it would get alone, sampled ones
too: every row draws from its own random generator, seeded with ``seed``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from lmexport.engine import Engine, Response, Stats, open_artifact
from lmexport.errors import GenerationError, NonFiniteError
from lmexport.runtime.sampling import SamplingParams, choose
from lmexport.runtime.batch import left_pad, positions_from_mask

# Generated text is decoded after this many prompt tokens, so that a decoder
# which strips the first space of a text (SentencePiece/Metaspace) keeps the
# space between the prompt and the first new word.
ANCHOR_TOKENS = 4


@dataclass
class Generation:
    prompt: str
    text: str = ""                       # the new text, cut before a stop string
    token_ids: list[int] = field(default_factory=list)   # every new token but EOS
    prompt_tokens: int = 0
    finish_reason: str = "length"        # "eos", "stop" or "length"


Piece = Response                         # the streamed piece: lmexport.engine.Response (index, text)


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


def check_text(text: str, what: str) -> None:
    """A GenerationError unless ``text`` is a string of real characters (no lone surrogates:
    the bytes of a non-UTF-8 command-line argument arrive in Python as such)."""
    if not isinstance(text, str):
        raise GenerationError(f"{what} is not text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise GenerationError(f"{what} is not valid UTF-8 (character {exc.start})",
                              hint="pass text in UTF-8") from None


def check_finite(logits: np.ndarray, folder, where: str) -> None:
    """A NonFiniteError (exit 1) when the artifact computed NaN or infinite logits."""
    if not np.isfinite(logits).all():
        bad = int((~np.isfinite(logits)).sum())
        raise NonFiniteError(f"{folder} computed {bad} NaN or infinite logit(s) at the {where}: the exported "
                             "graph or its weights are broken", hint="run lmexport parity against its model folder")


class RowProgress:
    """One prompt's progress: its new ids, their text, and how much of it was released."""

    def __init__(self, gen: Generation, tokenizer, prompt_ids: Sequence[int],
                 stops: Sequence[str]):
        self.gen, self.tokenizer, self.stops = gen, tokenizer, [s for s in stops if s]
        self.anchor = list(prompt_ids[-ANCHOR_TOKENS:])
        self.anchor_text = tokenizer.decode(self.anchor)
        self.sent, self.done, self.last = 0, False, -1

    def _text(self) -> str:
        full = self.tokenizer.decode(self.anchor + self.gen.token_ids)
        if full.startswith(self.anchor_text):
            return full[len(self.anchor_text):]
        return self.tokenizer.decode(self.gen.token_ids)   # a decoder that rewrites across the seam

    def update(self, eos_ids: set[int], token: int) -> str:
        """Add a token; return the newly released text."""
        self.last = token
        if token in eos_ids:
            self.gen.finish_reason, self.done = "eos", True
        else:
            self.gen.token_ids.append(token)
        text = self._text()
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            text, self.gen.finish_reason, self.done = text[:cut], "stop", True
        self.gen.text = text
        end = len(text)
        if not self.done:
            while end > self.sent and text[end - 1] == "\ufffd":   # an incomplete UTF-8 sequence
                end -= 1
            end -= held_back(text[:end], self.stops)                # and what may begin a stop string
        if end <= self.sent:
            return ""
        piece, self.sent = text[self.sent:end], end
        return piece

    def finish(self) -> str:
        self.done = True
        piece, self.sent = self.gen.text[self.sent:], len(self.gen.text)
        return piece


class Generator:
    """The generation loop over one engine (its tokenizer, context length and EOS/pad ids)."""

    def __init__(self, engine: Engine, tokenizer=None):
        self.engine = engine
        self.tokenizer = tokenizer if tokenizer is not None else engine.tokenizer
        info = engine.info
        self.context_length = info.context_length
        self.eos_token_ids = {int(i) for i in (info.eos_token_ids or self.tokenizer.eos_token_ids)}
        self.pad_token_id = info.pad_token_id
        self.last_stats = Stats()

    @classmethod
    def open(cls, path: str | Path, *, engine: str | None = None, **options) -> "Generator":
        """Any artifact ``lmexport.engine.open_artifact`` opens (an ONNX folder, a GGUF file, ...)."""
        return cls(open_artifact(path, engine=engine, **options))

    @classmethod
    def from_folder(cls, folder: str | Path, *, device: str = "cpu", threads: int | None = None,
                    optimization: str = "all") -> "Generator":
        """An exported ONNX folder in ONNX Runtime."""
        from lmexport.runtime.ort import OnnxEngine

        return cls(OnnxEngine(folder, device=device, threads=threads, optimization=optimization))

    @property
    def device(self) -> str:
        return self.engine.info.device

    def stats_line(self, stats: Stats | None = None) -> str:
        """The one ``--stats`` line, the same on every engine."""
        return (stats or self.last_stats).line(self.engine.info.engine, self.device)

    # ------------------------------------------------------------ prompts
    def encode_prompt(self, prompt: str, *, chat: bool = False, max_new_tokens: int = 0,
                      truncate: bool = False) -> list[int]:
        check_text(prompt, "the prompt")
        if chat:   # a rendered template holds its own special tokens (transformers: add_special_tokens=False)
            ids = self.tokenizer.encode(self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}]),
                                        add_special_tokens=False)
        else:
            ids = self.tokenizer.encode(prompt)
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

    # ------------------------------------------------------------ the loop
    def decode_loop(self, tokens: np.ndarray, mask: np.ndarray, rows: list[RowProgress],
                    params: SamplingParams, rngs: list[np.random.Generator], seen: list[set[int]],
                    max_new_tokens: int, stats: Stats) -> Iterator[Response]:
        """Feed ``tokens`` ([B, T]; ``mask`` covers the past and them) to the engine, then choose, release
        and feed back one token per row until every row is done. The engine's state then holds every
        chosen token but the last (``RowProgress.last``)."""
        for step in range(max_new_tokens):
            started = time.perf_counter()
            logits = self.engine.step(tokens, mask, positions_from_mask(mask, tokens.shape[1]))[:, -1]
            check_finite(logits, self.engine.path, "prefill" if step == 0 else f"decode step {step}")
            nxt = choose(logits, params, rngs, seen)
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
                piece = row.update(self.eos_token_ids, int(nxt[i]))
                if piece:
                    yield Response(i, piece)
            if all(r.done for r in rows):
                break
            # finished rows keep running on padding until the whole batch is done; nobody reads them
            tokens = np.where([r.done for r in rows], self.pad_token_id, nxt)[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((len(rows), 1), dtype=np.int64)], axis=1)
        for i, row in enumerate(rows):
            yield Response(i, row.finish(), row.gen.finish_reason)

    # ------------------------------------------------------------ generation
    def stream(self, prompts: str | Sequence[str], *, max_new_tokens: int = 64,
               sampling: SamplingParams | None = None, stop: Sequence[str] = (), chat: bool = False,
               truncate: bool = False, results: list[Generation] | None = None, **sampling_kw) -> Iterator[Response]:
        """Yield text pieces as they are produced, for each prompt (``Response.index``); each row ends with
        one Response that carries its ``finish_reason`` (its text may be empty).

        ``sampling`` or its fields as keywords (temperature, top_k, top_p,
        repetition_penalty, seed); ``results`` (a list) receives one Generation per prompt.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise GenerationError("no prompt given")
        for s in stop:
            check_text(s, "a --stop string")
        params = sampling or SamplingParams(**sampling_kw)
        encoded = [self.encode_prompt(p, chat=chat, max_new_tokens=max_new_tokens, truncate=truncate)
                   for p in prompts]
        gens = [Generation(p, prompt_tokens=len(ids)) for p, ids in zip(prompts, encoded)]
        if results is not None:
            results.extend(gens)
        rows = [RowProgress(g, self.tokenizer, ids, stop) for g, ids in zip(gens, encoded)]
        rngs = [np.random.default_rng(params.seed) for _ in rows]
        seen = [set(ids) for ids in encoded]
        stats = self.last_stats = Stats(prompt_tokens=sum(map(len, encoded)))

        ids, mask = left_pad(encoded, self.pad_token_id)
        self.engine.reset(len(encoded))
        yield from self.decode_loop(ids, mask, rows, params, rngs, seen, max_new_tokens, stats)

    def generate(self, prompts: str | Sequence[str], **kwargs) -> list[Generation]:
        """Generate for one prompt or a batch; returns one Generation per prompt."""
        results: list[Generation] = []
        for _ in self.stream(prompts, results=results, **kwargs):
            pass
        return results
