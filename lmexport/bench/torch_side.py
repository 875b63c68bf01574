"""The PyTorch reference model as a benchmark row: eager, with its explicit state.

Each decode call feeds the previous call's key/value, convolution and context state
back in, exactly as an exported graph is driven, so no prefix is recomputed.
"""
from __future__ import annotations

import numpy as np
import torch

from lmexport.modeling.checkpoint import load_model
from lmexport.modeling.stepper import TorchStepper
from lmexport.errors import DeviceError, InputError
from lmexport.bench.measure import BenchResult, Workload, run_protocol

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ArgmaxStepper(TorchStepper):
    """The reference stepper, returning the next token; the argmax runs on the device so
    a CUDA row is timed without copying logits to the host."""

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return super().step(ids, mask, positions)[:, -1, :].argmax(dim=-1).cpu().numpy()

    def logits(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return super().step(ids, mask, positions)[:, -1, :].float().cpu().numpy()


def open_stepper(model_dir: str, torch_dtype: str, device: torch.device) -> tuple[ArgmaxStepper, int]:
    """The reference model of ``model_dir`` in ``torch_dtype`` on ``device`` as a stepper, and its vocabulary size."""
    model, ckpt = load_model(model_dir, dtype=TORCH_DTYPES[torch_dtype])
    return ArgmaxStepper(model.to(device), device), ckpt.config.vocab_size


def resolve_torch_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but this torch build sees no CUDA device",
                          hint="use --device cpu or auto")
    return torch.device(device)


def bench_torch(model_dir: str, workload: Workload, *, device: str = "auto", threads: int | None = None,
                torch_dtype: str = "fp32", progress=None) -> BenchResult:
    if torch_dtype not in TORCH_DTYPES:
        raise InputError(f"--torch-dtype must be one of {', '.join(TORCH_DTYPES)}, got {torch_dtype!r}")
    dev = resolve_torch_device(device)
    if torch_dtype == "fp16" and dev.type == "cpu":
        raise InputError("--torch-dtype fp16 is for CUDA; on CPU use fp32 or bf16")
    if threads:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    return run_protocol(lambda: open_stepper(model_dir, torch_dtype, dev), workload, artifact=str(model_dir),
                        backend="pytorch", variant=torch_dtype,
                        device=dev.type, threads=torch.get_num_threads() if dev.type == "cpu" else None,
                        versions={"torch": torch.__version__}, sync=sync, progress=progress)
