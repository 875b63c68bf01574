"""The state an exported graph carries between calls, as transformers' ``past_key_values``.

One tensor per state input of lmexport.json (role key, value, conv or context),
kept by input name. It starts as the manifest says (``init: zeros``, with
``batch_size`` -> the batch and ``past_sequence_length`` -> 0), is replaced by the
``present`` output each input names after every call, and is reordered along the
batch axis for beam search. transformers treats it as an opaque cache: it hands it
back to ``forward`` and, for beam search, to ``_reorder_cache``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from lmexport.errors import ArtifactError
from lmexport.manifest import IOSpec

TORCH_DTYPES = {"int64": torch.int64, "float32": torch.float32, "float16": torch.float16}
BATCH_AXIS = "batch_size"
PAST_AXIS = "past_sequence_length"


def _axis(spec: IOSpec, name: str) -> int:
    if name not in spec.shape:
        raise ArtifactError(f"state input {spec.name} has no {name} axis (shape {list(spec.shape)})",
                            hint="re-export the folder with lmexport onnx")
    return spec.shape.index(name)


class OnnxState:
    """The past of every state input, by name; immutable (each call makes a new one)."""

    def __init__(self, specs: Sequence[IOSpec], tensors: Mapping[str, torch.Tensor]):
        self.specs = tuple(specs)
        self.tensors = dict(tensors)
        missing = [s.name for s in self.specs if s.name not in self.tensors]
        if missing:
            raise ArtifactError(f"the state lacks {', '.join(missing)}")
        # the past length is read off the first state that has that axis (the keys)
        self._past = next(((s.name, s.shape.index(PAST_AXIS)) for s in self.specs if PAST_AXIS in s.shape), None)

    @classmethod
    def initial(cls, specs: Sequence[IOSpec], batch: int) -> "OnnxState":
        axes = {BATCH_AXIS: batch, PAST_AXIS: 0}
        tensors = {}
        for s in specs:
            if s.init != "zeros":
                raise ArtifactError(f"state input {s.name} asks for init {s.init!r}; only zeros is known",
                                    hint="re-export the folder with this version of lmexport")
            tensors[s.name] = torch.zeros(s.concrete_shape(axes), dtype=TORCH_DTYPES[s.dtype])
        return cls(specs, tensors)

    @classmethod
    def from_outputs(cls, specs: Sequence[IOSpec], outputs: Mapping[str, np.ndarray]) -> "OnnxState":
        """The next call's past: each input takes the output its ``present`` names."""
        return cls(specs, {s.name: torch.from_numpy(outputs[s.present]) for s in specs})

    # ------------------------------------------------------------ what generate() asks
    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens already in the state (transformers' Cache method name)."""
        if self._past is None:
            return 0
        name, axis = self._past
        return int(self.tensors[name].shape[axis])

    @property
    def batch_size(self) -> int:
        s = self.specs[0]
        return int(self.tensors[s.name].shape[_axis(s, BATCH_AXIS)])

    def reorder(self, beam_idx: torch.Tensor) -> "OnnxState":
        """The state of the rows ``beam_idx`` picks, in that order (beam search)."""
        return OnnxState(self.specs, {s.name: self.tensors[s.name].index_select(_axis(s, BATCH_AXIS), beam_idx)
                                      for s in self.specs})

    def feeds(self) -> dict[str, np.ndarray]:
        """The graph inputs, as contiguous host arrays (no copy when already contiguous)."""
        return {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in self.tensors.items()}

    def __repr__(self) -> str:
        return f"OnnxState({len(self.specs)} inputs, batch {self.batch_size}, past {self.get_seq_length()})"
