"""The artifact ``lmexport perplexity`` scores, opened in its engine (``lmexport.engine.open_artifact``).

Every kind is scored by the one ``engine_scorer`` over the same windows (lmexport.perplexity).
"""
from __future__ import annotations

from pathlib import Path

from lmexport.engine import artifact_kind, open_artifact
from lmexport.errors import InputError
from lmexport.perplexity import WindowScorer, engine_scorer

ENGINES = ("auto", "llama.cpp")


def open_scorer(path: Path, device: str = "cpu", engine: str = "auto") -> tuple[WindowScorer, str, int]:
    """(scorer, kind, context length) for a model folder, an ONNX folder or a GGUF file.

    ``engine``: "auto" runs a GGUF through its PyTorch rebuild; "llama.cpp" runs it in the patched
    llama.cpp (GGUF files only; llama.cpp's default F16 KV cache, as its own perplexity tool runs)."""
    kind = artifact_kind(path)
    if engine == "llama.cpp":
        if kind != "gguf":
            raise InputError(f"--engine llama.cpp scores GGUF files; {path} is a {kind} artifact")
        from lmexport.runtime.llamacpp.install import require_patched
        require_patched()
        from lmexport.exporters.gguf.reader import open_gguf
        context = open_gguf(path).config().max_position_embeddings
        eng = open_artifact(path, engine="llama.cpp", n_ctx=context, n_batch=context, n_ubatch=min(512, context))
        return engine_scorer(eng), "gguf (llama.cpp)", context
    eng = open_artifact(path, engine="pytorch" if kind == "gguf" else None, device=device)
    return engine_scorer(eng), kind, eng.info.context_length
