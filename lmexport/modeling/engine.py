"""The PyTorch reference as an engine (``lmexport.engine``): a Liquid-Metal model folder, or a model
already built (the exporters' reference, a model rebuilt from a GGUF's tensors).

Each call feeds the previous call's key/value, convolution and context state back in, as an
exported graph is driven, so no prefix is recomputed. ``step`` returns float32 logits on the host;
``step_device`` keeps them where the model runs (the benchmark's argmax on CUDA). Per-layer
module outputs (``intermediates``) come from the model's own forward.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmexport.engine import EngineBase, EngineInfo
from lmexport.errors import DeviceError, InputError
from lmexport.modeling.model import LiquidMetalForCausalLM

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """cpu, cuda, or auto (CUDA when torch sees one); a DeviceError for cuda without it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but this torch build sees no CUDA device",
                          hint="use --device cpu or auto")
    return torch.device(device)


class TorchEngine(EngineBase):
    def __init__(self, path: str | Path | None = None, *, device: str = "cpu", threads: int | None = None,
                 dtype: str = "fp32", model: LiquidMetalForCausalLM | None = None, kind: str = "pytorch",
                 variant: str | None = None):
        """``path``: a model folder (loaded here), or where ``model`` came from."""
        if dtype not in TORCH_DTYPES:
            raise InputError(f"--torch-dtype must be one of {', '.join(TORCH_DTYPES)}, got {dtype!r}")
        self.device = resolve_device(device)
        if dtype == "fp16" and self.device.type == "cpu":
            raise InputError("--torch-dtype fp16 is for CUDA; on CPU use fp32 or bf16")
        if threads:
            torch.set_num_threads(threads)
        self.path = Path(path) if path is not None else Path("<model>")
        if model is None:
            from lmexport.modeling.checkpoint import load_model

            model, _ = load_model(self.path, dtype=TORCH_DTYPES[dtype])
        self.model = model.to(self.device).eval()
        self.state = None                           # (present kv, conv, context) of the last call
        self._tokenizer = None
        c = self.model.config
        self.info = EngineInfo(kind=kind, engine="pytorch", variant=variant or dtype, device=self.device.type,
                               context_length=c.max_position_embeddings, vocab_size=c.vocab_size,
                               bos_token_id=c.bos_token_id,
                               pad_token_id=c.pad_token_id if c.pad_token_id is not None else 0,
                               versions={"torch": torch.__version__})

    def sync(self) -> None:
        """Wait for the device (a CUDA row is timed to the end of its kernels)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    @property
    def threads_used(self) -> int | None:
        """torch's intra-op threads on the CPU (None on CUDA)."""
        return torch.get_num_threads() if self.device.type == "cpu" else None

    def reset(self, batch: int) -> None:
        self.state = None

    @torch.inference_mode()
    def greedy_step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """One call; the greedy next token per row, argmax on the model's device (a CUDA benchmark row is
        timed without copying logits to the host)."""
        return self.step_device(ids, mask, positions)[:, -1, :].argmax(dim=-1).cpu().numpy()

    @torch.inference_mode()
    def step_device(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> torch.Tensor:
        """One call; logits [B, T, V] on the model's device, in its dtype."""
        kv, conv, ctx = self.state if self.state else (None, None, None)
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        out = self.model(to(ids), to(mask), to(positions), past_key_values=kv, past_conv=conv, past_context=ctx)
        self.state = (out.present_key_values, out.present_conv, out.present_context)
        return out.logits

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self.step_device(ids, mask, positions).float().cpu().numpy()

    @property
    def has_probes(self) -> bool:
        return True

    @torch.no_grad()
    def intermediates(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        out = self.model(to(ids), to(mask), to(positions), return_intermediates=True)
        return {k: v.float().cpu().numpy() for k, v in out.intermediates.items()}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from lmexport.modeling.tokenizer import checkpoint_tokenizer

            self._tokenizer = checkpoint_tokenizer(self.path)
        return self._tokenizer
