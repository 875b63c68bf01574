"""Tolerance presets: how close an export must stay to the PyTorch reference.

One table, read by the ONNX validator, the GGUF validator and ``lmexport parity``.
Torch-free. A preset bounds the logits of every compared position:

* ``max_abs``: largest absolute logit difference (None: not checked);
* ``min_top1``: smallest fraction of positions whose argmax agrees;
* ``max_kl``: largest mean KL(reference || export) of a step, in nats;
* ``min_cosine``: smallest cosine similarity of two logit rows;
* ``hidden_rel``: localisation threshold, max |ref - art| / max |ref| of one
  layer module's output; the first module above it is named on failure.
* ``state_rel``: bound on max |ref - art| / max |ref| of each carried state (ONNX
  validation) where ``max_abs`` is None; None falls back to ``hidden_rel``. For the
  quantized variants it is a wiring check (a stale, zeroed or swapped state is off by
  ~1), not a quality bound: quantization error compounds through deep stacks of
  layers, and quality is judged on the logits.

fp32 exports are held to exact-math bounds; quantised ones to quality bounds
measured on tiny and on the bundled trained model (see the README's table).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from lmexport.errors import InputError


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None
    min_top1: float | None
    max_kl: float | None
    min_cosine: float | None
    hidden_rel: float
    state_rel: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


TOLERANCES: dict[str, Tolerance] = {
    # ONNX variants (lmexport onnx --dtype/--quantize)
    "fp32": Tolerance(max_abs=1e-4, min_top1=None, max_kl=1e-6, min_cosine=0.99999, hidden_rel=1e-4),
    "fp16": Tolerance(max_abs=None, min_top1=0.9, max_kl=5e-3, min_cosine=0.999, hidden_rel=2e-2,
                      state_rel=5e-2),
    "int8": Tolerance(max_abs=None, min_top1=0.8, max_kl=5e-2, min_cosine=0.99, hidden_rel=1e-1,
                      state_rel=0.25),
    "int4": Tolerance(max_abs=None, min_top1=0.6, max_kl=2e-1, min_cosine=0.95, hidden_rel=2e-1,
                      state_rel=0.5),
    # GGUF outtypes (lmexport gguf --outtype), compared through the rebuilt model
    "gguf-f32": Tolerance(max_abs=1e-5, min_top1=None, max_kl=1e-7, min_cosine=0.999999, hidden_rel=1e-5),
    "gguf-f16": Tolerance(max_abs=None, min_top1=0.95, max_kl=1e-3, min_cosine=0.9995, hidden_rel=1e-2),
    "gguf-bf16": Tolerance(max_abs=None, min_top1=0.9, max_kl=5e-3, min_cosine=0.999, hidden_rel=3e-2),
    "gguf-q8_0": Tolerance(max_abs=None, min_top1=0.9, max_kl=1e-2, min_cosine=0.998, hidden_rel=5e-2),
    "gguf-q5_0": Tolerance(max_abs=None, min_top1=0.7, max_kl=1e-1, min_cosine=0.98, hidden_rel=1.5e-1),
    "gguf-q5_1": Tolerance(max_abs=None, min_top1=0.7, max_kl=1e-1, min_cosine=0.98, hidden_rel=1.5e-1),
    "gguf-q4_0": Tolerance(max_abs=None, min_top1=0.6, max_kl=2e-1, min_cosine=0.95, hidden_rel=2.5e-1),
    "gguf-q4_1": Tolerance(max_abs=None, min_top1=0.6, max_kl=2e-1, min_cosine=0.95, hidden_rel=2.5e-1),
    # llama.cpp's K-quant mixes (lmexport llamacpp quantize), run in the patched llama.cpp
    "gguf-q6_k": Tolerance(max_abs=None, min_top1=0.9, max_kl=1e-2, min_cosine=0.998, hidden_rel=5e-2),
    "gguf-q5_k_m": Tolerance(max_abs=None, min_top1=0.8, max_kl=5e-2, min_cosine=0.99, hidden_rel=1e-1),
    "gguf-q4_k_m": Tolerance(max_abs=None, min_top1=0.7, max_kl=1e-1, min_cosine=0.98, hidden_rel=1.5e-1),
}


def get_tolerance(preset: str) -> Tolerance:
    try:
        return TOLERANCES[preset]
    except KeyError:
        raise InputError(f"unknown tolerance preset {preset!r}",
                         hint="choose one of " + ", ".join(TOLERANCES)) from None


def check(metrics, tol: Tolerance) -> list[str]:
    """Every bound a metrics object (max_abs, top1, kl_mean, cosine_min) exceeds; NaN/inf always fail."""
    failures = []
    if getattr(metrics, "nonfinite", 0):
        failures.append(f"{metrics.nonfinite} NaN/inf values")
    if tol.max_abs is not None and metrics.max_abs > tol.max_abs:
        failures.append(f"max |logit diff| {metrics.max_abs:.3g} > {tol.max_abs:g}")
    if tol.min_top1 is not None and metrics.top1 < tol.min_top1:
        failures.append(f"top-1 agreement {metrics.top1:.3f} < {tol.min_top1:g}")
    if tol.max_kl is not None and metrics.kl_mean > tol.max_kl:
        failures.append(f"KL {metrics.kl_mean:.3g} > {tol.max_kl:g}")
    if tol.min_cosine is not None and metrics.cosine_min < tol.min_cosine:
        failures.append(f"cosine {metrics.cosine_min:.6f} < {tol.min_cosine:g}")
    return failures
