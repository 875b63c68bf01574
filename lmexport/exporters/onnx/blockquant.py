"""Block quantisation of a weight matrix by a searched scale and zero point (numpy only).

Written by hand: onnxruntime's quantizer offers round-to-nearest from each block's
range (``DefaultWeightOnlyQuantConfig``) and ``k_quant``, and both lose much more than
llama.cpp on a real model (issue 23: SmolLM2-135M at +22% and +30% perplexity against
Q4_K_M's +7%); HQQ and GPTQ need calibration or an optimiser loop. What makes llama.cpp's
q4_1/Q4_K good is a per-block search (``make_qkx2_quants`` in ggml-quants.c, read, not
copied): try a few scales around ``(max - min) / nmax``, quantise with each, refit the
scale and offset by weighted least squares for the integers it chose, keep the one
with the smallest importance-weighted squared error. This module does that for every
block of a matrix at once (vectorised over blocks), for the two encodings MatMulNBits
and GatherBlockQuantized read:

* ``zero="float"``: w ~ (q - z) * s with a float z per block (MatMulNBits' unpacked zero
  points, same type as the scales): any offset, as q4_1/Q4_K store it (w = d*q + m).
* ``zero="uint"``: an integer z in [0, 2^bits - 1] (packed uint8 zero points, the only
  kind GatherBlockQuantized reads): the search picks z with the scale.

Layout (MatMulNBits' B for a weight of N outputs and K inputs, blocks along K): q is
[N, K/block, block] integers, packed low bits first into [N, K/block, block*bits/8]
uint8; scales [N, K/block] float32 (with ``scale_dtype=np.float16``: float32 values that fp16
holds exactly, so a graph can store them as fp16 and cast); zero points [N, K/block] float32 or
[N, ceil(K/block * bits / 8)] packed uint8.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The scale grid searched around nmax/(max - min): iscale = (nmax + RMIN + RDELTA*i) / (max - min)
# for i in 0..NSTEP (make_qkx2_quants uses -1, 0.1, 20 for 4 bits). The plain range fit is
# always a candidate too, so the search is never worse than round-to-nearest from the range
# in the weighted error it minimises. At 8 bits one code step is 1/255 of the range and a
# coarser grid of 6 candidates measures the same (a quarter of the time).
RMIN, RDELTA, NSTEP = -1.0, 0.1, 20
NSTEP_8BIT = 5


@dataclass
class Quantized:
    """One matrix in MatMulNBits' layout (see the module doc)."""
    q: np.ndarray            # [N, n_blocks, block] uint8, values 0..2^bits-1
    scales: np.ndarray       # [N, n_blocks] float32
    zeros: np.ndarray        # [N, n_blocks] float32 (float) or uint8 (uint)
    bits: int
    block: int

    k: int = 0               # the matrix's input size (the last block may be partial); 0: n_blocks * block

    def dequantize(self) -> np.ndarray:
        """[N, K] float32: (q - z) * s."""
        w = (self.q.astype(np.float32) - self.zeros.astype(np.float32)[..., None]) * self.scales[..., None]
        return w.reshape(w.shape[0], -1)[:, :self.k or None]

    @property
    def float_zeros(self) -> bool:
        """Real-valued zero points (unpacked, the scales' type) rather than packed uint8 ones."""
        return self.zeros.dtype != np.uint8

    def head(self, rows: int) -> "Quantized":
        """The first ``rows`` output rows (blocks run along K, so they are those rows' own quantisation)."""
        return Quantized(self.q[:rows], self.scales[:rows], self.zeros[:rows], self.bits, self.block, self.k)

    def packed_q(self) -> np.ndarray:
        return pack_bits(self.q, self.bits)

    def packed_zeros(self) -> np.ndarray:
        """uint zeros packed like B along the block axis ([N, ceil(n_blocks*bits/8)]); float as they are."""
        if self.float_zeros:
            return self.zeros
        z = self.zeros
        per = 8 // self.bits
        pad = (-z.shape[1]) % per
        if pad:
            z = np.concatenate([z, np.zeros((z.shape[0], pad), np.uint8)], axis=1)
        return pack_bits(z, self.bits)

    @property
    def nbytes(self) -> int:
        return self.packed_q().nbytes + self.scales.nbytes + self.packed_zeros().nbytes


def pack_bits(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack integers < 2^bits along the last axis, low bits first (MatMulNBits' B)."""
    q = q.astype(np.uint8)
    if bits == 8:
        return q
    per = 8 // bits
    q = q.reshape(*q.shape[:-1], q.shape[-1] // per, per)
    out = np.zeros(q.shape[:-1], np.uint8)
    for i in range(per):
        out |= (q[..., i] << (bits * i)).astype(np.uint8)
    return out


def importance(w: np.ndarray, act_sq: np.ndarray | None = None) -> np.ndarray:
    """Per-weight importance, [N, K] for w [N, K]. Without activations: make_qkx2_quants'
    choice, the block's rms plus |w| (larger weights weigh more, none weighs zero). With
    ``act_sq`` [K] (mean squared input of each input feature, from calibration text):
    that, times the same, so the error is weighted as the MatMul's output sees it."""
    blocks = np.abs(w)
    base = np.sqrt(np.mean(w * w, axis=-1, keepdims=True)) + blocks
    return base if act_sq is None else base * act_sq[None, :]


def quantize_blocks(w: np.ndarray, bits: int, block: int, zero: str = "float",
                    weights: np.ndarray | None = None, search: bool = True,
                    scale_dtype: type = np.float32) -> Quantized:
    """Quantise w [N, K] to ``bits`` per weight in blocks along K (a partial last block is padded).

    ``weights`` [N, K]: the importance of each weight's error (default ``importance(w)``).
    ``search=False`` is round-to-nearest from each block's range (the baseline the search beats).
    ``scale_dtype=np.float16``: each chosen scale is rounded to fp16 (as q4_0/q4_1/q8_0 store
    theirs) and the block's codes are rounded again for it, so what is stored is what is returned."""
    if zero not in ("float", "uint"):
        raise ValueError(f"zero must be 'float' or 'uint', not {zero!r}")
    n, k = w.shape
    imp = (importance(w) if weights is None else weights).astype(np.float32)
    pad = (-k) % block
    if pad:         # MatMulNBits' last block is partial: pad it with its own last value, weight 0
        w = np.pad(w, ((0, 0), (0, pad)), mode="edge")
        imp = np.pad(imp, ((0, 0), (0, pad)))
        k += pad
    x = w.astype(np.float32).reshape(n * (k // block), block)
    imp = imp.reshape(x.shape)
    nmax = (1 << bits) - 1
    lo, hi = x.min(axis=1), x.max(axis=1)
    span = np.where(hi > lo, hi - lo, 1.0)
    steps = NSTEP if bits <= 4 else NSTEP_8BIT
    delta = RDELTA * NSTEP / steps
    candidates = [0.0] + ([RMIN + delta * i for i in range(steps + 1)] if search else [])
    best = None
    for c in candidates:
        iscale = (nmax + c) / span                                        # [B]
        if zero == "float":
            q = np.clip(np.rint((x - lo[:, None]) * iscale[:, None]), 0, nmax)
            if c == 0.0 and not search:                                    # RTN: the range fit as is
                s, m = 1.0 / iscale, lo
            else:
                s, m = _refit_offset(x, q, imp, 1.0 / iscale, lo)
            z = -m / s
        else:
            z = np.clip(np.rint(-lo * iscale), 0, nmax)
            q = np.clip(np.rint(x * iscale[:, None] + z[:, None]), 0, nmax)
            s = 1.0 / iscale if (c == 0.0 and not search) else _refit_scale(x, q - z[:, None], imp, 1.0 / iscale)
        err = np.sum(imp * (s[:, None] * (q - z[:, None]) - x) ** 2, axis=1)
        if best is None:
            best = [err, q, s, z]
        else:
            better = err < best[0]
            for slot, new in zip(best, (err, q, s, z)):
                slot[better] = new[better]
    _, q, s, z = best
    if scale_dtype is not np.float32:
        q, s, z = _round_scales(x, q, s, z, zero, nmax, scale_dtype)
    flat = hi <= lo                                                        # constant block: exact
    if flat.any():
        q[flat] = 0
        if zero == "float":
            s[flat], z[flat] = 1.0, -lo[flat]
        else:
            # |w| = s * z with z the largest code: w = (0 - z) * s; w >= 0 uses q = z + w/s
            s[flat] = round_scale(np.where(lo[flat] != 0, np.abs(lo[flat]) / nmax, 1.0), scale_dtype)
            z[flat] = np.where(lo[flat] < 0, nmax, 0)
            q[flat] = np.where(lo[flat] > 0, nmax, 0)[:, None]
    nb = k // block
    zeros = z.astype(np.float32 if zero == "float" else np.uint8).reshape(n, nb)
    return Quantized(q.astype(np.uint8).reshape(n, nb, block), s.astype(np.float32).reshape(n, nb), zeros, bits,
                     block, k - pad)


def round_scale(s: np.ndarray, scale_dtype: type = np.float32) -> np.ndarray:
    """float32 scales rounded to ``scale_dtype`` (kept positive: one that would flush to zero
    takes the type's smallest positive value), returned as float32."""
    if scale_dtype is np.float32:
        return s.astype(np.float32)
    tiny = np.finfo(scale_dtype).smallest_subnormal
    r = np.clip(s, tiny, np.finfo(scale_dtype).max).astype(scale_dtype).astype(np.float32)
    return np.where(r > 0, r, np.float32(tiny))


def _round_scales(x, q, s, z, zero, nmax, scale_dtype):
    """Each block's scale rounded to ``scale_dtype``; its offset (float zero) or integer zero point
    kept; the codes rounded again for the new scale."""
    r = round_scale(s, scale_dtype)
    if zero == "float":
        m = -s * z                                         # the offset s*(q - z) = s*q + m keeps
        q = np.clip(np.rint((x - m[:, None]) / r[:, None]), 0, nmax)
        return q, r, -m / r
    q = np.clip(np.rint(x / r[:, None] + z[:, None]), 0, nmax)
    return q, r, z


def _refit_offset(x, q, imp, s0, m0):
    """Weighted least squares for (s, m) in s*q + m ~ x, per block (q fixed)."""
    sw = imp.sum(1)
    sl = (imp * q).sum(1)
    sl2 = (imp * q * q).sum(1)
    sx = (imp * x).sum(1)
    sxl = (imp * x * q).sum(1)
    d = sw * sl2 - sl * sl
    ok = d > 1e-30 * np.maximum(sw * sl2, 1e-30)
    s = np.where(ok, (sw * sxl - sx * sl) / np.where(ok, d, 1), s0)
    m = np.where(ok, (sl2 * sx - sl * sxl) / np.where(ok, d, 1), m0)
    bad = ~(s > 0)
    return np.where(bad, s0, s), np.where(bad, m0, m)


def _refit_scale(x, l, imp, s0):
    """Weighted least squares for s in s*l ~ x, per block (l = q - z fixed)."""
    num = (imp * x * l).sum(1)
    den = (imp * l * l).sum(1)
    s = np.where(den > 0, num / np.where(den > 0, den, 1), s0)
    return np.where(s > 0, s, s0)


def weighted_error(w: np.ndarray, qz: Quantized, weights: np.ndarray | None = None) -> float:
    """sum(importance * (dequantized - w)^2) over the matrix."""
    imp = importance(w) if weights is None else weights
    return float(np.sum(imp * (qz.dequantize() - w) ** 2))
