"""Window scorers for ``lmexport perplexity``: one per kind of model or artifact.

Each returns a ``perplexity.WindowScorer`` (window ids, first target -> summed NLL),
so every backend is measured by the same windowing (lmexport.perplexity).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from lmexport.errors import InputError
from lmexport.runtime.tokenizer_fit import check_ids_fit
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


ENGINES = ("auto", "llama.cpp")


def fitting(score: WindowScorer, vocab_size: int | None) -> WindowScorer:
    """The scorer, refusing (one line) ids the model has no row for, where tokenizer and model meet."""
    def checked(ids: Sequence[int], first_target: int) -> float:
        check_ids_fit(ids, vocab_size)
        return score(ids, first_target)

    return checked if isinstance(vocab_size, int) else score


def open_scorer(path: Path, device: str = "cpu", engine: str = "auto") -> tuple[WindowScorer, str, int]:
    """(scorer, kind, context length) for a model folder, an ONNX folder or a GGUF file.

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
        return (fitting(onnx_scorer(path, device), manifest.config.get("vocab_size")), "onnx",
                int(manifest.config.get("max_position_embeddings", 2048)))
    if path.is_dir() and (path / "config.json").is_file():
        from lmexport.modeling.config import LiquidMetalConfig
        from lmexport.modeling.precheck import precheck, read_config_dict

        config = LiquidMetalConfig.from_dict(read_config_dict(precheck(path)))
        return fitting(torch_folder_scorer(path), config.vocab_size), "pytorch", config.max_position_embeddings
    if path.is_file():
        from lmexport.exporters.gguf.reader import open_gguf
        g = open_gguf(path)
        context, vocab = g.config().max_position_embeddings, g.config().vocab_size
        if engine == "llama.cpp":
            return fitting(llamacpp_scorer(path, context), vocab), "gguf (llama.cpp)", context
        return fitting(gguf_scorer(path), vocab), "gguf", context
    raise InputError(f"{path} is not a model folder, an exported ONNX folder or a GGUF file")
