"""Text through llama-cpp-python's own sampler (``create_completion`` / ``Llama.generate``).

lmexport's commands sample with the one loop of ``lmexport.runtime.generator`` on every engine;
this is llama.cpp's native path (its sampler chain: top_k 40 and top_p 0.95 by default, as
llama.cpp's tools), kept for callers that want exactly what llama-cpp-python gives.
"""
from __future__ import annotations

from typing import Iterator, Sequence

from lmexport.errors import InputError


def generate(engine, prompt: str | Sequence[int], *, max_tokens: int = 64, temperature: float = 0.0, top_k: int = 40,
             top_p: float = 0.95, min_p: float = 0.0, repeat_penalty: float = 1.0, seed: int | None = None,
             stop: Sequence[str] | str | None = None) -> Iterator[str]:
    """Stream the completion of ``prompt`` (text, or token ids as they are) as text pieces
    (llama-cpp-python's create_completion). temperature 0 is greedy."""
    check_sampling(max_tokens, temperature, top_k, top_p, repeat_penalty)
    stream = engine.llm.create_completion(
        prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repeat_penalty=repeat_penalty, seed=engine.options.seed if seed is None else seed,
        stop=[stop] if isinstance(stop, str) else list(stop or []), stream=True)
    for chunk in stream:
        text = chunk["choices"][0]["text"]
        if text:
            yield text


def generate_ids(engine, token_ids: Sequence[int], *, max_tokens: int = 64, temperature: float = 0.0,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.0, repeat_penalty: float = 1.0,
                 seed: int | None = None, stop_ids: Sequence[int] = ()) -> Iterator[int]:
    """Stream generated token ids after the prompt ``token_ids`` (llama-cpp-python's Llama.generate)."""
    check_sampling(max_tokens, temperature, top_k, top_p, repeat_penalty)
    ids = engine._check_ids(token_ids)
    if seed is not None or engine.options.seed is not None:
        engine.llm.set_seed(engine.options.seed if seed is None else seed)
    engine.llm.reset()
    stops = set(int(t) for t in stop_ids)
    for n, tok in enumerate(engine.llm.generate(ids, top_k=top_k, top_p=top_p, min_p=min_p, temp=temperature,
                                              repeat_penalty=repeat_penalty, reset=True)):
        if tok in stops or n >= max_tokens:
            break
        yield int(tok)
        if n + 1 >= max_tokens or len(ids) + n + 1 >= engine.options.n_ctx:
            break


def check_sampling(max_tokens, temperature, top_k, top_p, repeat_penalty) -> None:
    if max_tokens < 1:
        raise InputError("max_tokens must be at least 1")
    if temperature < 0:
        raise InputError("temperature must be >= 0 (0 is greedy)")
    if top_k < 0 or not 0 < top_p <= 1:
        raise InputError("top_k must be >= 0 and top_p in (0, 1]")
    if repeat_penalty <= 0:
        raise InputError("repeat_penalty must be > 0")
