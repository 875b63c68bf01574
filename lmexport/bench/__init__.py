"""``lmexport bench``: load time, prefill latency, decode tokens/s and peak RSS of any artifact.

An ARTIFACT is whatever ``lmexport.engine.open_artifact`` opens: an exported ONNX folder (ONNX
Runtime, torch-free), a GGUF file (the patched llama.cpp) or a Liquid-Metal model folder (the
PyTorch reference, imported only then). Every row is measured by one protocol (``protocol.py``,
stdlib and numpy only, shared with the optimum-onnx and llama.cpp workers of
``benchmarks/run.py``); memory readings are ``memory.py``.
"""
from __future__ import annotations

from pathlib import Path

from lmexport.errors import InputError
from lmexport.bench.limits import workload_problems
from lmexport.bench.protocol import BenchResult, Spread, Workload

__all__ = ["BenchResult", "Spread", "Workload", "run_bench"]


def _model_config(path: Path, kind: str) -> dict:
    """The config.json of the model (an ONNX folder's is in its lmexport.json, a GGUF's in its metadata, a .pte's
    in its sidecar), checked."""
    if kind == "onnx":
        from lmexport.manifest import Manifest
        return Manifest.read(path).config
    if kind == "gguf":
        from lmexport.exporters.gguf.reader import open_gguf
        return open_gguf(path).config().to_dict()
    if kind == "pte":         # the sidecar's config, its context the program's KV cache
        from lmexport.exporters.executorch import sidecar
        meta = sidecar.read(path)
        return {**meta["source"]["config"], "max_position_embeddings": meta["max_context"]}
    from lmexport.config import LiquidMetalConfig
    from lmexport.errors import ConfigError
    from lmexport.jsonio import read_json_object
    return LiquidMetalConfig.from_dict(read_json_object(path / "config.json", ConfigError)).to_dict()


def run_bench(artifact: str | Path, workload: Workload, *, device: str = "auto", threads: int | None = None,
              torch_dtype: str | None = None, progress=None) -> BenchResult:
    from lmexport.bench.protocol import run_protocol
    from lmexport.engine import artifact_kind, open_artifact

    problems = workload.problems()
    if threads is not None and threads < 1:
        problems.append(f"--threads must be at least 1, got {threads}")
    if problems:
        raise InputError("; ".join(problems))
    path = Path(artifact)
    kind = artifact_kind(path)
    problems = workload_problems(workload, _model_config(path, kind), threads)
    if problems:
        raise InputError("; ".join(problems), hint="choose a smaller workload")
    options: dict = {"device": device, "threads": threads}
    if kind == "pytorch":
        options["dtype"] = torch_dtype or "fp32"
    elif torch_dtype is not None:
        raise InputError(f"--torch-dtype applies to a PyTorch model folder; {artifact} is an "
                         f"{'ONNX folder' if kind == 'onnx' else kind + ' file'} whose precision was fixed at export")
    if kind == "gguf":
        options["n_ctx"] = workload.prompt_tokens + workload.new_tokens
    opened = []

    def load():
        engine = open_artifact(path, **options)
        opened.append(engine)
        return engine, engine.info.vocab_size

    def sync():
        if opened and hasattr(opened[0], "sync"):
            opened[0].sync()

    result = run_protocol(load, workload, artifact=str(artifact), backend="", variant="", device=device,
                          threads=threads, sync=sync, progress=progress)
    engine = opened[0]
    info = engine.info
    result.backend, result.variant, result.device = info.engine, info.variant, info.device
    result.threads = getattr(engine, "threads_used", threads)
    result.versions = dict(info.versions)
    if kind == "onnx":
        from lmexport.runtime.hugepages import active as hugepages_active
        result.versions["glibc_malloc_hugetlb"] = "on" if hugepages_active() else "off"
    engine.close()
    return result
