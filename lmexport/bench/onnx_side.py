"""An exported ONNX folder as a benchmark row, run by the runtime users deploy.

``lmexport.runtime.Session`` does everything: names, state shapes and dtypes from
lmexport.json, zeros to start, each call's presents fed back (kept on the device
with IO binding on CUDA). Torch-free, like the runtime.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lmexport.manifest import Manifest
from lmexport.bench.measure import BenchResult, Workload, run_protocol


class OnnxStepper:
    """The runtime's Stepper, returning the next token; ``session`` is the runtime Session."""

    def __init__(self, session):
        self.session = session
        self._stepper = session.stepper()

    @classmethod
    def open(cls, folder: str | Path, *, device: str = "cpu", threads: int | None = None) -> "OnnxStepper":
        from lmexport.runtime import Session

        return cls(Session(folder, device=device, threads=threads))

    @property
    def vocab_size(self) -> int:
        return int(self.session.manifest.config["vocab_size"])

    def reset(self, batch: int) -> None:
        self._stepper.reset(batch)

    def logits(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self._stepper.step(ids, mask, positions)[:, -1, :]

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self.logits(ids, mask, positions).argmax(axis=-1)


def bench_onnx(folder: str, workload: Workload, *, device: str = "auto", threads: int | None = None,
               progress=None) -> BenchResult:
    import onnxruntime as ort

    from lmexport.runtime.hugepages import active as hugepages_active

    manifest = Manifest.read(folder)
    opened: list[OnnxStepper] = []

    def load():
        stepper = OnnxStepper.open(folder, device=device, threads=threads)
        opened.append(stepper)
        return stepper, stepper.vocab_size

    result = run_protocol(load, workload, artifact=folder, backend="onnxruntime", variant=manifest.variant,
                          device=device, threads=threads, versions={"onnxruntime": ort.__version__,
                                                      "glibc_malloc_hugetlb": "on" if hugepages_active() else "off"},
                          progress=progress)
    result.device = opened[0].session.device
    return result
