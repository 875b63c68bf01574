"""The ONNX side of a parity run: the real exported folder in ONNX Runtime.

Per-layer module outputs come from the folder's own graph: lmexport.json names
the graph values that hold them (``probes``); they are added as outputs of an
in-memory copy of the graph, so the weights and the computation are the
artifact's, not a stand-in's.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lmexport.manifest import Manifest
from lmexport.runtime.ort import Session, graph_values

log = logging.getLogger(__name__)


class OnnxBackend:
    def __init__(self, folder: Path, manifest: Manifest, device: str):
        self.folder, self.manifest, self.device = folder, manifest, device
        self.name = f"onnx {manifest.dtype}/{manifest.quantization.get('method', 'none')}"
        self.stepper = Session(folder, device=device).stepper()
        self._probe_stepper: Session | None = None
        self._probes: dict[str, str] = {}

    def reset(self, batch: int) -> None:
        self.stepper.reset(batch)

    def step(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return self.stepper.step(ids, mask, pos).astype(np.float32)

    def intermediates(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
        probes = self.manifest.probes
        if not probes:
            log.warning("%s lists no probes: cannot localise inside the graph", self.folder)
            return {}
        if self._probe_stepper is None:
            present = graph_values(self.folder, self.manifest)
            self._probes = {key: value for key, value in probes.items() if value in present}
            gone = len(probes) - len(self._probes)
            if not self._probes:
                log.warning("none of the %d probe values of %s is left in its graph (optimised or re-written?): "
                            "cannot localise the divergence inside it", len(probes), self.folder)
                return {}
            if gone:
                log.warning("%d of %d probe values of %s are gone from its graph (optimised or re-written?): "
                            "localisation covers only the %d left", gone, len(probes), self.folder, len(self._probes))
            self._probe_stepper = Session(self.folder, device=self.device,
                                          extra_outputs=tuple(self._probes.values()))
        out = self._probe_stepper.run(ids, mask, pos, self._probe_stepper.zero_state(ids.shape[0]))
        return {key: out[value].astype(np.float32) for key, value in self._probes.items()}
