"""Open the artifact side of a parity run, after checking (once) that it came from this model.

Each kind reads its identity (recorded weights hash and config) cheaply first; the
check runs before the artifact is loaded, so a wrong-model artifact is an input
error reported before any numbers.
"""
from __future__ import annotations

from pathlib import Path

from lmexport.errors import ArtifactError, InputError
from lmexport.modeling.checkpoint import Checkpoint
from lmexport.parity.backends import TorchBackend
from lmexport.parity.identity import check_same_model


ENGINES = ("pytorch", "llama.cpp")


def _gguf(path: Path, ckpt: Checkpoint, device: str, engine: str = "pytorch", batch_size: int = 3):
    from gguf import Keys

    from lmexport.exporters.gguf.format import ARCH_LIQUIDMETAL, OUTTYPE, file_outtype, tolerance_preset
    from lmexport.exporters.gguf.reader import load_gguf_model, open_gguf

    g = open_gguf(path)
    if g.arch != ARCH_LIQUIDMETAL:
        raise ArtifactError(f"{path} is a {g.arch!r} GGUF, not a Liquid-Metal ({ARCH_LIQUIDMETAL}) one",
                            hint="parity compares Liquid-Metal exports; export with lmexport gguf --arch auto")
    check_same_model(ckpt, path, g.weights_hash, g.source_config)
    if engine == "llama.cpp":
        from lmexport.runtime.llamacpp.engine import require_patched
        require_patched()            # before the rebuild: without the build, one line on how to build it
    model, _, _ = load_gguf_model(path)
    outtype = file_outtype(g.value(Keys.General.FILE_TYPE), g.value(OUTTYPE))
    rebuild = TorchBackend(model, name=f"gguf {outtype}")
    if engine == "llama.cpp":
        from lmexport.parity.llamacpp_backend import LlamaCppBackend
        return (LlamaCppBackend(path, rebuild, batch_size=batch_size, context=ckpt.config.max_position_embeddings),
                tolerance_preset(outtype))
    return rebuild, tolerance_preset(outtype)


def _onnx(folder: Path, ckpt: Checkpoint, device: str, engine: str = "pytorch", batch_size: int = 3):
    from lmexport.manifest import Manifest
    from lmexport.parity.onnx_backend import OnnxBackend

    if engine != "pytorch":
        raise InputError(f"--engine {engine} runs GGUF files; {folder} is an ONNX folder",
                         hint="drop --engine for an ONNX folder (it runs on ONNX Runtime)")
    manifest = Manifest.read(folder)
    check_same_model(ckpt, folder, manifest.weights_hash, manifest.config)
    return OnnxBackend(folder, manifest, device), manifest.preset


def _pte(path: Path, ckpt: Checkpoint, device: str, engine: str = "pytorch", batch_size: int = 3):
    """An ExecuTorch program in executorch.runtime (one loaded method per row of a batch)."""
    from lmexport.exporters.executorch import sidecar
    from lmexport.exporters.executorch.engine import ExecutorchEngine

    if engine != "pytorch":
        raise InputError(f"--engine {engine} runs GGUF files; {path} is an ExecuTorch program",
                         hint="drop --engine for a .pte (it runs in executorch.runtime)")
    meta = sidecar.read(path)
    check_same_model(ckpt, path, meta["source"].get("weights_hash"), meta["source"].get("config"))
    return ExecutorchEngine(path, device=device, meta=meta), meta.get("tolerance_preset") or "fp32"


OPENERS = {"gguf": _gguf, "onnx": _onnx, "pte": _pte}


def open_artifact(kind: str, path: Path, ckpt: Checkpoint, device: str = "cpu", engine: str = "pytorch",
                  batch_size: int = 3):
    """(backend, default tolerance preset) for an ONNX folder, a GGUF file or a .pte.

    ``engine`` (GGUF only): "pytorch" rebuilds the model from the file's tensors; "llama.cpp" runs the
    file in the patched llama.cpp (its logits; per-layer outputs from the PyTorch rebuild)."""
    if engine not in ENGINES:
        raise InputError(f"unknown parity engine {engine!r}", hint="choose one of " + ", ".join(ENGINES))
    return OPENERS[kind](path, ckpt, device, engine, batch_size)
