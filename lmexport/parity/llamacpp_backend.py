"""The llama.cpp side of ``lmexport parity --engine llama.cpp``: a GGUF's logits from the patched llama.cpp.

llama.cpp has no padding inside a sequence, so each row of a left-padded batch is its own
llama.cpp sequence (seq_id = row, positions from the mask) in one context; only the valid tokens
are decoded, and the logits come back in the batch layout ``[B, T, V]`` (zeros at padded
positions, which the parity loop never reads). llama.cpp gives no per-layer outputs:
``intermediates`` come from the PyTorch rebuild of the same file (``rebuild``), and the report
says so.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lmexport.errors import InputError
from lmexport.parity.backends import TorchBackend


class LlamaCppBackend:
    name = "llama.cpp"

    def __init__(self, path: Path, rebuild: TorchBackend, *, batch_size: int, context: int, f32_kv: bool = True,
                 threads: int | None = None):
        from lmexport.runtime.llamacpp.engine import LlamaCppEngine

        self.path = Path(path)
        self.rebuild = rebuild
        self.context = context
        n_ctx = batch_size * context       # llama.cpp splits n_ctx between the sequences of a context
        self.engine = LlamaCppEngine(self.path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=512, f32_kv=f32_kv,
                                     n_threads=threads)
        self.ctx = None
        self.batch = 0

    def reset(self, batch: int) -> None:
        self.ctx = self.engine.sequences(batch)
        self.batch = batch

    def step(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
        b, t = ids.shape
        if b != self.batch:
            raise InputError(f"batch of {b} rows after a reset for {self.batch}")
        valid = mask[:, mask.shape[1] - t:].astype(bool)
        where = [(r, c) for r in range(b) for c in range(t) if valid[r, c]]
        if any(int(pos[r, c]) >= self.context for r, c in where):
            raise InputError(f"a sequence reaches past the context of {self.context} tokens")
        rows = self.engine.decode(self.ctx, [(ids[r, c], pos[r, c], r) for r, c in where])
        out = np.zeros((b, t, rows.shape[1]), dtype=np.float32)
        for (r, c), row in zip(where, rows):
            out[r, c] = row
        return out

    def intermediates(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
        return self.rebuild.intermediates(ids, mask, pos)

    def close(self) -> None:
        self.engine.close()
