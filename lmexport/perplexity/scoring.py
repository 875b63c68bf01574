"""The artifact ``lmexport perplexity`` scores, opened in its engine (``lmexport.engine.open_artifact``).

Every kind is scored by the one ``engine_scorer`` over the same windows (lmexport.perplexity).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lmexport.engine import artifact_kind, open_artifact
from lmexport.errors import InputError
from lmexport.perplexity import WindowScorer, engine_scorer
from lmexport.runtime.tokenizer_fit import check_ids_fit


ENGINES = ("auto", "llama.cpp")


def fitting(score: WindowScorer, vocab_size: int | None) -> WindowScorer:
    """The scorer, refusing (one line) ids the model has no row for, where tokenizer and model meet."""
    def checked(ids: Sequence[int], first_target: int) -> float:
        check_ids_fit(ids, vocab_size)
        return score(ids, first_target)

    return checked if isinstance(vocab_size, int) else score


def open_scorer(path: Path, device: str = "cpu", engine: str = "auto") -> tuple[WindowScorer, str, int]:
    """(scorer, kind, context length) for a model folder, an ONNX folder, a GGUF file or a .pte.

    ``engine``: "auto" runs a GGUF through its PyTorch rebuild; "llama.cpp" runs it in the patched
    llama.cpp (GGUF files only; llama.cpp's default F16 KV cache, as its own perplexity tool runs)."""
    eng, kind, context = open_engine(path, device, engine)
    return fitting(engine_scorer(eng), eng.info.vocab_size), kind, context


def open_engine(path: Path, device: str = "cpu", engine: str = "auto"):
    """(engine, kind, context length): the engine ``open_scorer`` scores with (see there)."""
    kind = artifact_kind(path)
    if engine == "llama.cpp":
        if kind != "gguf":
            raise InputError(f"--engine llama.cpp scores GGUF files; {path} is a {kind} artifact")
        from lmexport.runtime.llamacpp.install import require_patched
        require_patched()
        from lmexport.exporters.gguf.reader import open_gguf
        context = open_gguf(path).config().max_position_embeddings
        eng = open_artifact(path, engine="llama.cpp", n_ctx=context, n_batch=context, n_ubatch=min(512, context))
        return eng, "gguf (llama.cpp)", context
    eng = open_artifact(path, engine="pytorch" if kind == "gguf" else None, device=device)
    return eng, kind, eng.info.context_length
