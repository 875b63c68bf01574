"""``lmexport bench``: load time, prefill latency, decode tokens/s and peak RSS.

An ARTIFACT is either an exported ONNX folder (it holds ``lmexport.json``; run by
the torch-free runtime) or a Liquid-Metal model folder (it holds ``config.json``;
run by the PyTorch reference, which is imported only then). The measurement
protocol is in ``measure`` (stdlib and numpy only, shared with the optimum-onnx and
llama.cpp workers of ``benchmarks/run.py``).
"""
from __future__ import annotations

from pathlib import Path

from lmexport.errors import InputError
from lmexport.bench.limits import workload_problems
from lmexport.bench.measure import BenchResult, Spread, Workload

__all__ = ["BenchResult", "Spread", "Workload", "artifact_kind", "run_bench"]


def artifact_kind(path: str | Path) -> str:
    """"onnx" for an exported folder, "pytorch" for a model folder; InputError otherwise."""
    from lmexport.manifest import MANIFEST_FILE

    folder = Path(path)
    if not folder.exists():
        raise InputError(f"{folder} does not exist", hint="pass an exported ONNX folder or a model folder")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder",
                         hint="pass an exported ONNX folder (lmexport.json) or a model folder (config.json)")
    if (folder / MANIFEST_FILE).is_file():
        return "onnx"
    if (folder / "config.json").is_file():
        return "pytorch"
    raise InputError(f"{folder} holds neither {MANIFEST_FILE} nor config.json",
                     hint="pass an exported ONNX folder or a Liquid-Metal model folder")


def _model_config(folder: Path, kind: str) -> dict:
    """The config.json of the model (an ONNX folder's is in its lmexport.json), checked."""
    if kind == "onnx":
        from lmexport.manifest import Manifest
        return Manifest.read(folder).config
    from lmexport.errors import ConfigError
    from lmexport.jsonio import read_json_object
    from lmexport.modeling.config import LiquidMetalConfig
    return LiquidMetalConfig.from_dict(read_json_object(folder / "config.json", ConfigError)).to_dict()


def run_bench(artifact: str | Path, workload: Workload, *, device: str = "auto", threads: int | None = None,
              torch_dtype: str | None = None, progress=None) -> BenchResult:
    problems = workload.problems()
    if threads is not None and threads < 1:
        problems.append(f"--threads must be at least 1, got {threads}")
    if problems:
        raise InputError("; ".join(problems))
    kind = artifact_kind(artifact)
    problems = workload_problems(workload, _model_config(Path(artifact), kind), threads)
    if problems:
        raise InputError("; ".join(problems), hint="choose a smaller workload")
    if kind == "onnx":
        if torch_dtype is not None:
            raise InputError("--torch-dtype applies to a PyTorch model folder; "
                             f"{artifact} is an ONNX folder whose precision was fixed at export")
        from lmexport.bench.onnx_side import bench_onnx

        return bench_onnx(str(artifact), workload, device=device, threads=threads, progress=progress)
    from lmexport.bench.torch_side import bench_torch

    return bench_torch(str(artifact), workload, device=device, threads=threads,
                       torch_dtype=torch_dtype or "fp32", progress=progress)
