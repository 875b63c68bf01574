"""What the optimum tests share: the bundled model, prompts, and reading generate()'s ids."""
from __future__ import annotations

from pathlib import Path

from lmexport.runtime import Generator

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "examples" / "liquid-metal-tiny"
PROMPTS = ("def read_file(path):", "import os", "class Point:\n    def __init__(self")


def new_tokens(model, tok, prompts, **kw) -> list[list[int]]:
    """generate()'s new ids per prompt, cut after the first EOS (kept), without the padding after it."""
    enc = tok(list(prompts), return_tensors="pt", padding=True)
    out = model.generate(**enc, **kw)[:, enc["input_ids"].shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    return [row[:row.index(eos) + 1] if eos in row else row for row in out]


def lmexport_tokens(gen: Generator, prompt: str, n: int) -> list[int]:
    """``lmexport generate``'s ids, with the EOS that ended it (transformers keeps it)."""
    [r] = gen.generate(prompt, max_new_tokens=n)
    return r.token_ids + ([min(gen.eos_token_ids)] if r.finish_reason == "eos" else [])
