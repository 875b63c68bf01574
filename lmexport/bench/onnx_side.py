"""An exported ONNX folder as a benchmark row: ONNX Runtime, state fed from lmexport.json.

Torch-free (onnxruntime and numpy only), like the runtime users deploy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DeviceError
from ..manifest import Manifest
from .measure import BenchResult, Workload, run_protocol

_NP = {"int64": np.int64, "float32": np.float32, "float16": np.float16}


def providers_for(device: str) -> tuple[str, list[str]]:
    """(device actually used, ORT providers) for --device cpu|cuda|auto."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise DeviceError("--device cuda was asked for, but this onnxruntime has no CUDAExecutionProvider",
                          hint="pip install onnxruntime-gpu, or use --device cpu")
    if device == "cuda" or (device == "auto" and has_cuda):
        return "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return "cpu", ["CPUExecutionProvider"]


class OnnxStepper:
    """One session over an exported folder; keeps the state between calls."""

    def __init__(self, folder: Path, manifest: Manifest, session):
        self.folder, self.manifest, self.session = folder, manifest, session
        self._presents = {s.present: s.name for s in manifest.state_inputs()}
        self._state: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, folder: str | Path, *, device: str = "cpu", threads: int | None = None,
             session_options=None) -> "OnnxStepper":
        import onnxruntime as ort

        folder = Path(folder)
        manifest = Manifest.read(folder)
        options = session_options or ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        _, providers = providers_for(device)
        session = ort.InferenceSession(str(folder / manifest.model_file), options, providers=providers)
        return cls(folder, manifest, session)

    @property
    def vocab_size(self) -> int:
        return int(self.manifest.config["vocab_size"])

    def reset(self, batch: int) -> None:
        axes = {"batch_size": batch, "past_sequence_length": 0}
        self._state = {s.name: np.zeros(s.concrete_shape(axes), dtype=_NP[s.dtype])
                       for s in self.manifest.state_inputs()}

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        feeds = {self.manifest.input("input_ids").name: ids, self.manifest.input("attention_mask").name: mask}
        pos = self.manifest.input("position_ids")
        if pos is not None:
            feeds[pos.name] = positions
        feeds.update(self._state)
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(None, feeds)))
        self._state = {self._presents[n]: v for n, v in outputs.items() if n in self._presents}
        logits = next(v for n, v in outputs.items() if n not in self._presents)
        return logits[:, -1, :].argmax(axis=-1)

    def end_profiling(self) -> str:
        return self.session.end_profiling()


def bench_onnx(folder: str, workload: Workload, *, device: str = "auto", threads: int | None = None,
               progress=None) -> BenchResult:
    import onnxruntime as ort

    used, _ = providers_for(device)
    manifest = Manifest.read(folder)
    method = manifest.quantization.get("method", "none")
    variant = manifest.dtype if method == "none" else method

    def load():
        stepper = OnnxStepper.open(folder, device=used, threads=threads)
        return stepper, stepper.vocab_size

    return run_protocol(load, workload, artifact=folder, backend="onnxruntime", variant=variant, device=used,
                        threads=threads, versions={"onnxruntime": ort.__version__}, progress=progress)
