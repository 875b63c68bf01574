"""Run an lmexport .pte in ``executorch.runtime`` (the ExecuTorch runtime's Python bindings).

``ExecutorchEngine`` implements the engine protocol (``lmexport.engine``, registered there as
kind ``pte``): ``reset(batch)``, ``step(ids, mask, positions) -> logits [B, T, V]`` with the state kept
inside, ``tokenizer``, ``info``, ``close``; no probes (``EngineBase``'s defaults: the program has no
per-layer outputs). Plus ``prefill``/``decode``-style helpers for one sequence:
``logits_for(ids, start)``.

The program is batch 1 (ExecuTorch's LLM runner contract). A batch of B rows uses B loaded
copies of the program: each owns its memory-planned buffers, hence its own KV cache, conv window
and context sums (two ``load_method`` calls on one loaded program share them: checked, the rows
then overwrite each other's state). A row's first call runs at ``input_pos = 0``,
which starts a new sequence in the program (program.py); ``reset`` only rewinds the rows'
positions. Left padding is dropped: a row feeds only its valid tokens, at the positions the
caller gives (the number of valid tokens before each).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lmexport.engine import EngineBase, EngineInfo
from lmexport.errors import ArtifactError, InputError
from lmexport.exporters.executorch import sidecar

KIND = "pte"
ENGINE = "executorch"


def runtime_missing_message() -> str:
    return ("running a .pte needs the executorch package (its runtime), which this installation lacks: "
            "pip install torch==2.13.0 'lmexport[executorch]' (torch pinned to its CPU build)")


class ExecutorchEngine(EngineBase):
    def __init__(self, path: str | Path, *, device: str = "cpu", threads: int | None = None,
                 meta: dict | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path} does not exist", hint="export one with `lmexport executorch`")
        if device not in ("cpu", "auto"):        # auto: the CPU, the only device it has
            raise InputError(f"the ExecuTorch engine runs on the CPU (XNNPACK), not {device}",
                             hint="drop --device")
        self.meta = meta if meta is not None else sidecar.read(self.path)
        try:
            from executorch.runtime import Runtime
            # registers ExecuTorch's LLM kernels (llama::update_cache, llama::custom_sdpa) that the program calls
            import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
        except ImportError:
            raise InputError(runtime_missing_message()) from None
        if threads is not None:
            _set_threads(threads)
        self._runtime = Runtime.get()
        self.program = self._load()
        self.method_name = self.meta.get("method", "forward")
        tok = self.meta["tokenizer"]
        config = self.meta["source"]["config"]
        self.max_context = int(self.meta["max_context"])
        # one call takes at most max_context - 1 tokens (the program's dynamic length bound), so that is
        # the context a caller may fill in one prefill (perplexity's windows, a prompt)
        self.info = EngineInfo(KIND, ENGINE, self.meta.get("variant", "fp32"), "cpu", self.max_context - 1,
                            int(config["vocab_size"]), tok.get("bos_token_id"),
                            tuple(tok.get("eos_token_ids") or ()), int(tok.get("pad_token_id") or 0),
                            self.meta.get("tolerance_preset"),
                            {k: v for k, v in self.meta.get("versions", {}).items() if v})
        self._methods: list = []
        self._next: list[int] = []       # per row: the position of its next token
        self._tokenizer = None

    def _load(self):
        try:
            return self._runtime.load_program(self.path)
        except (RuntimeError, ValueError) as exc:
            raise ArtifactError(f"executorch.runtime cannot load {self.path}: {str(exc).splitlines()[0]}",
                                hint="re-export it with `lmexport executorch`") from None

    # ------------------------------------------------------------ the program's constants
    def constant(self, name: str):
        """A constant method of the program (get_max_seq_len, get_bos_id, ...), as the LLM runner reads it."""
        if name not in self.program.method_names:
            raise ArtifactError(f"{self.path} has no method {name!r}")
        out = self.program.load_method(name).execute(())
        return out[0] if len(out) == 1 else list(out)

    # ------------------------------------------------------------ the engine protocol
    def reset(self, batch: int) -> None:
        while len(self._methods) < batch:
            program = self.program if not self._methods else self._load()
            try:
                self._methods.append(program.load_method(self.method_name))
            except RuntimeError as exc:
                raise ArtifactError(f"executorch.runtime cannot load the {self.method_name!r} method of {self.path}: "
                                    f"{str(exc).splitlines()[0]}",
                                    hint="its kernels are missing from this executorch (the sidecar names the version "
                                         "it was exported with); re-export it with `lmexport executorch`") from None
        self._next = [0] * batch

    def _run(self, row: int, tokens: np.ndarray, start: int) -> np.ndarray:
        import torch

        if start + len(tokens) > self.max_context:
            raise InputError(f"a sequence reaches past the program's context of {self.max_context} tokens",
                             hint="export with a larger --max-context, or use a shorter input")
        ids = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).view(1, -1)
        out = self._methods[row].execute((ids, torch.tensor([start], dtype=torch.int64)))
        return out[0].numpy()[0]                                          # (T, V)

    def logits_for(self, tokens, start: int = 0, row: int = 0) -> np.ndarray:
        """One call of one sequence: ``tokens`` at positions ``start..``; start 0 begins a new sequence."""
        if row >= len(self._methods):
            self.reset(row + 1)
        if start != 0 and start != self._next[row]:
            raise InputError(f"position {start} does not continue the sequence (next is {self._next[row]})",
                             hint="feed positions in order; position 0 starts a new sequence")
        logits = self._run(row, np.asarray(tokens), start)
        self._next[row] = start + len(tokens)
        return logits

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        b, t = ids.shape
        if b != len(self._next):
            raise InputError(f"batch of {b} rows after a reset for {len(self._next)}")
        valid = mask[:, mask.shape[1] - t:].astype(bool)
        out = None
        for r in range(b):
            cols = np.flatnonzero(valid[r])
            if not len(cols):
                continue
            start = int(positions[r, cols[0]])
            logits = self.logits_for(ids[r, cols], start, row=r)
            if out is None:
                out = np.zeros((b, t, logits.shape[-1]), dtype=np.float32)
            out[r, cols] = logits
        if out is None:
            out = np.zeros((b, t, self.info.vocab_size), dtype=np.float32)
        return out

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from lmexport.runtime.tokenizer import TextTokenizer

            folder = self.path.parent
            if not self.meta["tokenizer"].get("files") or not (folder / "tokenizer.json").is_file():
                raise ArtifactError(f"no tokenizer.json beside {self.path}",
                                    hint="export with the checkpoint's tokenizer files (they are written beside the .pte)")
            self._tokenizer = TextTokenizer.from_folder(folder, eos_token_ids=self.info.eos_token_ids)
        return self._tokenizer

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def close(self) -> None:
        self._methods.clear()


def _set_threads(threads: int) -> None:
    """XNNPACK's thread pool size (the runtime's pybindings expose it where built with threadpool)."""
    try:
        from executorch.extension.pybindings import portable_lib
        setter = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    except ImportError:
        setter = None
    if setter is not None:
        setter(int(threads))
