"""Open the artifact side of a parity run in its engine, after checking (once) that it came from this model.

Each kind reads its identity (recorded weights hash and config) cheaply first; the check runs
before the artifact is loaded, so a wrong-model artifact is an input error reported before any
numbers. The engines are the ones every command uses (``lmexport.engine``).
"""
from __future__ import annotations

from pathlib import Path

from lmexport.engine import artifact_kind, engine_class
from lmexport.errors import ArtifactError, InputError
from lmexport.modeling.checkpoint import Checkpoint
from lmexport.parity.identity import check_same_model

ENGINES = ("pytorch", "llama.cpp")


def _gguf(path: Path, ckpt: Checkpoint, device: str, engine: str, batch_size: int):
    from lmexport.exporters.gguf.reader import open_gguf
    from lmexport.formats.gguf import ARCH_LIQUIDMETAL

    g = open_gguf(path)
    if g.arch != ARCH_LIQUIDMETAL:
        raise ArtifactError(f"{path} is a {g.arch!r} GGUF, not a Liquid-Metal ({ARCH_LIQUIDMETAL}) one",
                            hint="parity compares Liquid-Metal exports; export with lmexport gguf --arch auto")
    check_same_model(ckpt, path, g.weights_hash, g.source_config)
    if engine == "llama.cpp":
        from lmexport.runtime.llamacpp.install import require_patched
        require_patched()            # before the rebuild: without the build, one line on how to build it
    rebuild = engine_class("gguf", "pytorch")(path)
    if engine == "llama.cpp":
        context = ckpt.config.max_position_embeddings
        art = engine_class("gguf", "llama.cpp")(path, n_ctx=context, n_batch=batch_size * context, n_ubatch=512,
                                                f32_kv=True)
        return art, rebuild
    return rebuild, rebuild


def _onnx(folder: Path, ckpt: Checkpoint, device: str, engine: str, batch_size: int):
    from lmexport.manifest import Manifest

    if engine != "pytorch":
        raise InputError(f"--engine {engine} runs GGUF files; {folder} is an ONNX folder",
                         hint="drop --engine for an ONNX folder (it runs on ONNX Runtime)")
    manifest = Manifest.read(folder)
    check_same_model(ckpt, folder, manifest.weights_hash, manifest.config)
    art = engine_class("onnx")(folder, device=device)
    return art, art


def _pte(path: Path, ckpt: Checkpoint, device: str, engine: str, batch_size: int):
    """An ExecuTorch program in executorch.runtime (one loaded method per row of a batch); it has no
    per-layer outputs, so a failure is reported without localisation."""
    from lmexport.exporters.executorch import sidecar

    if engine != "pytorch":
        raise InputError(f"--engine {engine} runs GGUF files; {path} is an ExecuTorch program",
                         hint="drop --engine for a .pte (it runs in executorch.runtime)")
    meta = sidecar.read(path)
    check_same_model(ckpt, path, meta["source"].get("weights_hash"), meta["source"].get("config"))
    art = engine_class("pte")(path, device=device, meta=meta)
    return art, art


OPENERS = {"gguf": _gguf, "onnx": _onnx, "pte": _pte}


def open_artifact(path: Path, ckpt: Checkpoint, device: str = "cpu", engine: str = "pytorch", batch_size: int = 3):
    """(engine that computes the artifact's logits, engine whose ``intermediates`` localise a failure) for an
    ONNX folder or a GGUF file. ``info.tolerance`` of the first is the default preset.

    ``engine`` (GGUF only): "pytorch" rebuilds the model from the file's tensors; "llama.cpp" runs the
    file in the patched llama.cpp (its logits; per-layer outputs from the PyTorch rebuild)."""
    if engine not in ENGINES:
        raise InputError(f"unknown parity engine {engine!r}", hint="choose one of " + ", ".join(ENGINES))
    kind = artifact_kind(path)
    if kind not in OPENERS:
        raise InputError(f"{path} is neither an exported ONNX folder nor a GGUF file (a {kind} artifact)",
                         hint="parity compares an export with the model folder it came from")
    return OPENERS[kind](path, ckpt, device, engine, batch_size)
