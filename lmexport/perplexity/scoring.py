"""Window scorers for ``lmexport perplexity``: one per kind of model or artifact.

Each returns a ``perplexity.WindowScorer`` (window ids, first target -> summed NLL),
so every backend is measured by the same windowing (lmexport.perplexity).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from lmexport.errors import InputError
from lmexport.perplexity import WindowScorer


def _nll_sum(logits: np.ndarray, targets: Sequence[int]) -> float:
    """Sum of -log softmax(logits)[target] over rows; logits [n, V]."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return float(-logp[np.arange(len(targets)), np.asarray(targets)].sum())


def onnx_scorer(folder: Path, device: str = "cpu") -> WindowScorer:
    """Each window is one prefill call from zero state on the exported graph."""
    from lmexport.runtime.ort import Session

    stepper = Session(folder, device=device)

    def score(ids: Sequence[int], first_target: int) -> float:
        x = np.asarray([list(ids)], dtype=np.int64)                        # (1, T)
        mask = np.ones_like(x)
        pos = np.arange(x.shape[1], dtype=np.int64)[None]
        out = stepper.run(x, mask, pos, stepper.zero_state(1))
        return _nll_sum(out[stepper.logits_name][0, first_target - 1:-1], ids[first_target:])

    return score


def gguf_scorer(path: Path) -> WindowScorer:
    """Through the model rebuilt from the GGUF's dequantised tensors (as parity does)."""
    from lmexport.exporters.gguf.reader import load_gguf_model
    from lmexport.perplexity import torch_scorer

    model, _, _ = load_gguf_model(path)
    return torch_scorer(model.eval())


def llamacpp_scorer(path: Path, context: int) -> WindowScorer:
    """Each window is one fresh llama.cpp sequence (the patched build; llama.cpp's default F16 KV cache,
    as its own perplexity tool runs), scored from llama.cpp's logits."""
    from lmexport.runtime.llamacpp.engine import LlamaCppEngine

    engine = LlamaCppEngine(path, n_ctx=context, n_batch=context, n_ubatch=min(512, context))

    def score(ids: Sequence[int], first_target: int) -> float:
        logits = engine.logits(list(ids))
        return _nll_sum(logits[first_target - 1:-1], ids[first_target:])

    return score


def torch_folder_scorer(folder: Path) -> WindowScorer:
    from lmexport.modeling.checkpoint import load_model
    from lmexport.perplexity import torch_scorer

    model, _ = load_model(folder)
    return torch_scorer(model)


def pte_scorer(path: Path) -> tuple[WindowScorer, int]:
    """Each window is one prefill at input_pos 0 (a new sequence) in executorch.runtime."""
    from lmexport.exporters.executorch.engine import ExecutorchEngine

    engine = ExecutorchEngine(path)

    def score(ids: Sequence[int], first_target: int) -> float:
        logits = engine.logits_for(list(ids), 0)
        return _nll_sum(logits[first_target - 1:-1], ids[first_target:])

    # the program takes at most max_context - 1 tokens in one call
    return score, engine.max_context - 1


ENGINES = ("auto", "llama.cpp")


def open_scorer(path: Path, device: str = "cpu", engine: str = "auto") -> tuple[WindowScorer, str, int]:
    """(scorer, kind, context length) for a model folder, an ONNX folder, a GGUF file or a .pte.

    ``engine``: "auto" runs a GGUF through its PyTorch rebuild; "llama.cpp" runs it in the patched
    llama.cpp (GGUF files only)."""
    if engine == "llama.cpp":
        if not path.is_file():
            raise InputError(f"--engine llama.cpp scores GGUF files; {path} is a folder")
        from lmexport.runtime.llamacpp.engine import require_patched
        require_patched()
    from lmexport.manifest import MANIFEST_FILE, Manifest

    if path.is_dir() and (path / MANIFEST_FILE).is_file():
        manifest = Manifest.read(path)
        return onnx_scorer(path, device), "onnx", int(manifest.config.get("max_position_embeddings", 2048))
    if path.is_dir() and (path / "config.json").is_file():
        from lmexport.modeling.config import LiquidMetalConfig
        from lmexport.modeling.precheck import precheck, read_config_dict

        config = LiquidMetalConfig.from_dict(read_config_dict(precheck(path)))
        return torch_folder_scorer(path), "pytorch", config.max_position_embeddings
    if path.is_file() and path.suffix == ".pte":
        if engine == "llama.cpp":
            raise InputError(f"--engine llama.cpp scores GGUF files; {path} is an ExecuTorch program",
                             hint="drop --engine for a .pte (it runs in executorch.runtime)")
        scorer, context = pte_scorer(path)
        return scorer, "executorch", context
    if path.is_file():
        from lmexport.exporters.gguf.reader import open_gguf
        g = open_gguf(path)
        context = g.config().max_position_embeddings
        if engine == "llama.cpp":
            return llamacpp_scorer(path, context), "gguf (llama.cpp)", context
        return gguf_scorer(path), "gguf", context
    raise InputError(f"{path} is not a model folder, an exported ONNX folder or a GGUF file")
