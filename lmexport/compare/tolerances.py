"""Tolerance presets: how close an export must stay to the PyTorch reference.

One table, read by the ONNX validator, the GGUF parity check and ``lmexport parity``.
Torch-free. Every bound on a tensor's values scales with that tensor's magnitude:

    max |ref - art| <= atol + rtol * max |ref|

where ``max |ref|`` is the largest reference value of the tensor over the whole run
(logits: every compared position of every call; a state: every call). ``atol`` only
matters for a tensor that is (nearly) zero. An absolute bound alone cannot work: a
real model's logits are tens and its running context sums hundreds, so fp32
rounding through 30 layers (3e-6 relative on SmolLM2-135M) is larger in absolute
terms than any bound that still catches a damaged random tiny model.

* ``atol``: the absolute floor of both bounds;
* ``rtol``: logits, relative part (None: no elementwise bound; quantised variants
  are judged by the distribution numbers below);
* ``state_rtol``: every carried state (ONNX validation: keys, values, convolution
  windows, context sums). For the quantised variants it is a wiring check (a stale,
  zeroed or swapped state is off by ~1 x its magnitude), not a quality bound:
  quantisation error compounds through deep stacks of layers. None (the GGUF
  presets: their parity compares logits only): ``hidden_rel``;
* ``min_top1``: smallest fraction of positions whose argmax agrees;
* ``max_kl``: largest mean KL(reference || export) of a step, in nats;
* ``min_cosine``: smallest cosine similarity of two logit rows;
* ``hidden_rel``: localisation threshold, max |ref - art| / max |ref| of one
  layer module's output; the first module above it is named on failure.

fp32 exports are held to exact-math bounds, about 10x the rounding measured on
SmolLM2-135M (30 layers: logits 3.2e-6 relative, worst state 1.3e-5, a convolution
window: the normalised input of a position whose residual stream is small next to
the largest one); quantised ones to quality bounds measured on tiny and on
the bundled trained model (see the README's table).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from lmexport.errors import InputError


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float | None
    state_rtol: float | None
    min_top1: float | None
    max_kl: float | None
    min_cosine: float | None
    hidden_rel: float

    def to_json(self) -> dict:
        return asdict(self)


def limit(atol: float, rtol: float, scale: float) -> float:
    """The largest allowed max |ref - art| of a tensor whose max |ref| is ``scale``."""
    return atol + rtol * scale


def exceeds(max_abs: float, scale: float, atol: float, rtol: float) -> bool:
    """Whether a difference breaks ``atol + rtol * scale``; NaN always does."""
    return not max_abs <= limit(atol, rtol, scale)


def bound_text(max_abs: float, scale: float, atol: float, rtol: float) -> str:
    """'0.00153 > 0.0012 (1e-05 + 3e-05 x 39.6); relative 3.9e-05'."""
    rel = max_abs / scale if scale > 0 else float("inf")
    return f"{max_abs:.3g} > {limit(atol, rtol, scale):.3g} ({atol:g} + {rtol:g} x {scale:.3g}); relative {rel:.3g}"


_FP32 = dict(atol=1e-5, rtol=5e-5, state_rtol=1e-4)

TOLERANCES: dict[str, Tolerance] = {
    # ONNX variants (lmexport onnx --dtype/--quantize)
    "fp32": Tolerance(**_FP32, min_top1=None, max_kl=1e-6, min_cosine=0.99999, hidden_rel=1e-4),
    "fp16": Tolerance(atol=1e-5, rtol=None, state_rtol=5e-2, min_top1=0.9, max_kl=5e-3, min_cosine=0.999,
                      hidden_rel=2e-2),
    "int8": Tolerance(atol=1e-5, rtol=None, state_rtol=0.25, min_top1=0.8, max_kl=5e-2, min_cosine=0.99,
                      hidden_rel=1e-1),
    "int4": Tolerance(atol=1e-5, rtol=None, state_rtol=0.5, min_top1=0.6, max_kl=2e-1, min_cosine=0.95,
                      hidden_rel=2e-1),
    # ExecuTorch 8da4w (lmexport executorch --quantize 8da4w): int4 weights per group of 32 with int8
    # dynamic activations, int8 embedding rows; int4's quality bounds (logits only: no state outputs)
    "8da4w": Tolerance(atol=1e-5, rtol=None, state_rtol=None, min_top1=0.6, max_kl=2e-1, min_cosine=0.95,
                       hidden_rel=2e-1),
    # GGUF outtypes (lmexport gguf --outtype), compared through the rebuilt model
    "gguf-f32": Tolerance(atol=1e-6, rtol=1e-6, state_rtol=None, min_top1=None, max_kl=1e-7, min_cosine=0.999999,
                          hidden_rel=1e-5),
    "gguf-f16": Tolerance(atol=1e-5, rtol=None, state_rtol=None, min_top1=0.95, max_kl=1e-3, min_cosine=0.9995,
                          hidden_rel=1e-2),
    "gguf-bf16": Tolerance(atol=1e-5, rtol=None, state_rtol=None, min_top1=0.9, max_kl=5e-3, min_cosine=0.999,
                           hidden_rel=3e-2),
    # q8_0: min_cosine as ONNX int8's; SmolLM2-135M's worst row in parity is 0.9924 (KL 0.0028, top-1 0.95)
    "gguf-q8_0": Tolerance(atol=1e-5, rtol=None, state_rtol=None, min_top1=0.9, max_kl=1e-2, min_cosine=0.99,
                           hidden_rel=5e-2),
    "gguf-q5_0": Tolerance(atol=1e-5, rtol=None, state_rtol=None, min_top1=0.7, max_kl=1e-1, min_cosine=0.98,
                           hidden_rel=1.5e-1),
    "gguf-q5_1": Tolerance(atol=1e-5, rtol=None, state_rtol=None, min_top1=0.7, max_kl=1e-1, min_cosine=0.98,
                           hidden_rel=1.5e-1),
    "gguf-q4_0": Tolerance(atol=1e-5, rtol=None, state_rtol=None, min_top1=0.6, max_kl=2e-1, min_cosine=0.95,
                           hidden_rel=2.5e-1),
    "gguf-q4_1": Tolerance(atol=1e-5, rtol=None, state_rtol=None, min_top1=0.6, max_kl=2e-1, min_cosine=0.95,
                           hidden_rel=2.5e-1),
    # llama.cpp's K-quant mixes (lmexport gguf --outtype q4_k_m, ...), run in the patched llama.cpp
    "gguf-q6_k": Tolerance(atol=1e-5, rtol=None, state_rtol=None, min_top1=0.9, max_kl=1e-2, min_cosine=0.998,
                           hidden_rel=5e-2),
    "gguf-q5_k_m": Tolerance(atol=1e-5, rtol=None, state_rtol=None, min_top1=0.8, max_kl=5e-2, min_cosine=0.99,
                             hidden_rel=1e-1),
    "gguf-q4_k_m": Tolerance(atol=1e-5, rtol=None, state_rtol=None, min_top1=0.7, max_kl=1e-1, min_cosine=0.98,
                             hidden_rel=1.5e-1),
}


GGUF_PREFIX = "gguf-"          # a GGUF file's preset is this prefix and its outtype


def gguf_preset(outtype: str) -> str:
    """The preset that holds the logits of a GGUF file of ``outtype`` (one name rule, checked against the table)."""
    name = GGUF_PREFIX + outtype
    if name not in TOLERANCES:
        raise InputError(f"no tolerance preset for GGUF outtype {outtype!r}",
                         hint="choose a preset with --tolerance: " + ", ".join(TOLERANCES))
    return name


def get_tolerance(preset: str) -> Tolerance:
    try:
        return TOLERANCES[preset]
    except KeyError:
        raise InputError(f"unknown tolerance preset {preset!r}",
                         hint="choose one of " + ", ".join(TOLERANCES)) from None


def check(metrics, tol: Tolerance) -> list[str]:
    """Every bound a metrics object (max_abs, ref_max, top1, kl_mean, cosine_min) exceeds; NaN/inf always fail."""
    failures = []
    if getattr(metrics, "nonfinite", 0):
        failures.append(f"{metrics.nonfinite} NaN/inf values")
    if tol.rtol is not None and exceeds(metrics.max_abs, metrics.ref_max, tol.atol, tol.rtol):
        failures.append("max |logit diff| " + bound_text(metrics.max_abs, metrics.ref_max, tol.atol, tol.rtol))
    if tol.min_top1 is not None and metrics.top1 < tol.min_top1:
        failures.append(f"top-1 agreement {metrics.top1:.3f} < {tol.min_top1:g}")
    if tol.max_kl is not None and metrics.kl_mean > tol.max_kl:
        failures.append(f"KL {metrics.kl_mean:.3g} > {tol.max_kl:g}")
    if tol.min_cosine is not None and metrics.cosine_min < tol.min_cosine:
        failures.append(f"cosine {metrics.cosine_min:.6f} < {tol.min_cosine:g}")
    return failures
