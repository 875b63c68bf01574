"""int8 and int4 variants of the fp32 graph: weight-only block quantisation (issue 23).

Both variants rewrite every MatMul with a constant weight into ``com.microsoft.MatMulNBits``
(blocks of ``block_size`` weights along the input axis, one scale and one packed
uint8 zero point per block, ``accuracy_level`` 4 = int8 compute on CPU) and the
token-embedding Gather into ``com.microsoft.GatherBlockQuantized`` over the same
encoding. Each block's scale and zero point come from the search in blockquant.py
(written by hand, see there why: onnxruntime's round-to-nearest and k_quant lose 3-4x
more than llama.cpp on SmolLM2-135M).

Scales are stored in fp16 (``scale_dtype``, as llama.cpp's q4_0/q4_1/q8_0 store theirs) and
cast to fp32 in the graph: MatMulNBits and GatherBlockQuantized take scales of their input's
type, and onnxruntime folds a Cast of an initializer when the session loads, so the kernels
see constant fp32 scales (prepacked as before) while the file holds half the bytes. At block
32 that is 0.5 bits per weight fewer, which the int4 budget spends on 8-bit upgrades; the
rounding itself costs an fp16 ulp of each scale (the codes are rounded again for it).

* 4-bit weights read by MatMuls alone carry a float offset per block instead of an integer
  zero point where that at least halves their error (``four_bit``, ``offsets_of``,
  ``BlockSums``; docs/onnx.md): MatMulNBits with integer zero point 0 plus
  ``blocksums(x) @ offsets`` (each block's minimum), since onnxruntime's 4-bit kernel with float zero points is
  ~100x slower. ``int4_offsets=False`` keeps uint8 zero points everywhere.
* int8: every weight at 8 bits (q8_0's bits per weight plus a zero point).
* int4: every weight at 4 bits, then the most sensitive ones at 8 bits until the file
  reaches the bits-per-weight budget (bitplan.py: which weights, at how many bits; ``plan_bits``).
  Sensitivity is measured, not guessed (``measure_sensitivity``): the KL each weight's 4-bit
  version adds to the model's output, a Fisher estimate from a few PyTorch backward passes;
  upgrades go in order of that KL per extra byte. The default budget is the size llama.cpp's
  Q4_K_M of the same model has (``q4_k_m_bits``), so the folder and that file are compared at
  equal bytes.

A tied lm_head is stored once: the embedding's quantised blocks, scales and zero points
feed both the GatherBlockQuantized (through a Reshape of the blocks to [vocab, bytes per
row]) and the lm_head's MatMulNBits (MatMulNBits' [N, blocks, bytes] with N = vocab is
the embedding's row-major layout). ``embeddings=False`` (a consumer without
GatherBlockQuantized) keeps the table fp32 and quantises only the head.

Everything else (norms, convolution, gates, softmax, context sums) stays fp32. The
result is saved with all weights in one external data file. The dynamic activation
quantisation int8 used before (``quantize_dynamic``) is gone: it measured +56%
perplexity on SmolLM2-135M against +0.3% for 8-bit weights in blocks (issue 23).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lmexport.exporters.onnx.bitplan import Site, find_sites, measure_sensitivity, plan_bits, q4_k_m_bits, site_bytes
from lmexport.exporters.onnx.blockquant import Quantized, quantize_blocks, round_scale, weighted_error
from lmexport.tensor_names import LM_HEAD, lookup, lookup_pack

log = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
# Initializer name suffixes a quantised weight W gets (-> "W<suffix>"), and what they hold.
QUANT_SUFFIXES = {
    "_Q4": "MatMulNBits 4-bit blocks [out, in/block, block/2]",
    "_Q8": "MatMulNBits 8-bit blocks [out, in/block, block]",
    "_scales": "MatMulNBits scales [out, in/block], fp16 (scale_dtype) cast to fp32 in the graph",
    "_zero_points": "MatMulNBits zero points, packed uint8 [out, ceil(in/block * bits/8)]",
    "_offsets": "4-bit block minimums [in/block, out] fp16, cast to fp32: y = MatMulNBits(x, zero 0) + blocksums(x) @ offsets",
}
SCALE_DTYPES = {"fp16": np.float16, "fp32": np.float32}   # --scale-dtype -> the stored scales' type
OFFSET_ZERO = 0                   # the integer zero point a 4-bit block with a float offset gives MatMulNBits
OFFSETS_GAIN = 0.5                # a weight takes float offsets when they at least halve its 4-bit error
OFFSETS_SAMPLE_ROWS = 64          # ... measured first on its first rows (most weights skip the full float search)


def _stores_tensors(name: str) -> bool:
    ref = lookup(name)
    return (ref is not None and ref.name == name) or lookup_pack(name) is not None


def canonical_of(name: str) -> tuple[str, str | None] | None:
    """(stored name, quantized layout or None) for an initializer that stores canonical
    tensors, else None. The stored name is a canonical tensor's (``lookup``) or a pack's
    (``lookup_pack``, whose ``members`` are the canonical tensors it holds side by side):
    ``model.layers.0.self_attn.qkv_proj.weight_Q4`` -> (``...qkv_proj.weight``, "MatMulNBits ...")."""
    for suffix, what in QUANT_SUFFIXES.items():
        if name.endswith(suffix) and _stores_tensors(name[:-len(suffix)]):
            return name[:-len(suffix)], what
    return (name, None) if _stores_tensors(name) else None


# ---------------------------------------------------------------- the 4-bit form of a weight

def four_bit(site: Site, block: int, options) -> Quantized:
    """A site's 4-bit form: float offsets where they pay, else packed uint8 zero points.

    Offsets cost a block-sum MatMul, an offset MatMul and an Add beside the MatMulNBits (~10% of
    SmolLM2-135M's decode time) and twice the zero points' bytes, so a weight takes them only when
    its importance-weighted error with them is below OFFSETS_GAIN of its error with integer zero
    points: on a q4_1-grid checkpoint every layer (exact against 7% relative error), on a trained
    fp32 one few or none. The embedding keeps integer zero points (GatherBlockQuantized reads no
    other kind)."""
    uint = quantize_blocks(site.matrix, 4, block, "uint", search=options.search, scale_dtype=scale_type(options))
    if not options.int4_offsets or site.gathers:
        return uint
    w = site.matrix
    if len(w) > OFFSETS_SAMPLE_ROWS:         # decide on a few rows first: the full float search costs a pass
        head = w[:OFFSETS_SAMPLE_ROWS]
        if not _offsets_pay(head, uint.head(OFFSETS_SAMPLE_ROWS), _with_offsets(head, block, options)):
            return uint
    offset = _with_offsets(w, block, options)
    return offset if _offsets_pay(w, uint, offset) else uint


def _with_offsets(w: np.ndarray, block: int, options) -> Quantized:
    dtype = scale_type(options)
    return round_offsets(quantize_blocks(w, 4, block, "float", search=options.search, scale_dtype=dtype), w, dtype)


def scale_type(options) -> type:
    """The numpy type the scales are stored in (``options.scale_dtype``)."""
    return SCALE_DTYPES[options.scale_dtype]


def _offsets_pay(w: np.ndarray, uint: Quantized, offset: Quantized) -> bool:
    return weighted_error(w, offset) < OFFSETS_GAIN * weighted_error(w, uint)


# ---------------------------------------------------------------- the rewrite

def quantize(src: Path, dst: Path, options, data_file: str, config, model=None) -> dict:
    """Quantize the fp32 graph at ``src`` into ``dst`` (+ ``data_file`` beside it).
    Returns what was chosen (the manifest's ``quantization`` details)."""
    from onnx.external_data_helper import set_external_data

    from lmexport.exporters.onnx.graph import INLINE_LIMIT, quiet

    with quiet("onnx", level=logging.WARNING):
        proto = onnx.load(str(src))
    graph = proto.graph
    block = options.block_size
    sites = find_sites(graph, block)
    if not options.quantize_embeddings:
        sites = [s for s in sites if not s.gathers]
    quantized4 = {}
    dtype = scale_type(options)
    scale_bytes = np.dtype(dtype).itemsize
    if options.quantize == "int8":
        bits = {s.name: 8 for s in sites}
        budget = None
    else:
        log.info("quantizing %d weights to 4 bits (block %d, searched scales)", len(sites), block)
        quantized4 = {s.name: four_bit(s, block, options) for s in sites}
        offsets = frozenset(n for n, q in quantized4.items() if q.float_zeros)
        log.info("%d of them with float offsets (they hold the blocks at least %gx better than uint8 zero points)",
                 len(offsets), 1 / OFFSETS_GAIN)
        budget = options.bits_per_weight
        if budget is None:
            budget = q4_k_m_bits(sites, config)
        floor = sum(site_bytes(s, 4, block, s.name in offsets, scale_bytes)
                    for s in sites) * 8 / sum(s.numel for s in sites)
        if budget <= floor:
            log.info("budget %.3f bits per weight <= %.3f (4 bits with scales and zero points): every weight at 4 bits",
                     budget, floor)
        if model is not None and budget > floor:
            log.info("measuring each weight's 4-bit sensitivity in PyTorch (%d weights)", len(sites))
            sensitivity = measure_sensitivity(model, sites, config, quantized4)
        else:
            sensitivity = {}
        bits = plan_bits(sites, block, budget, sensitivity, offsets, scale_bytes)
    drop = set()
    new_inits = []
    casts = Float32Casts()
    sums = BlockSums(block, new_inits)
    for site in sites:
        b = bits[site.name]
        q = quantized4[site.name] if b == 4 else quantize_blocks(site.matrix, b, block, "uint", search=options.search,
                                                                 scale_dtype=dtype)
        names = _site_initializers(site, q, new_inits, dtype, casts)
        for node in site.matmuls:
            _to_matmulnbits(node, names, q, options.accuracy_level, sums)
        for node in site.gathers:
            _to_gather_quantized(graph, node, names, q, new_inits)
        drop.update(site.drop)
    sums.insert_into(graph)
    casts.insert_into(graph)
    kept = [t for t in graph.initializer if t.name not in drop]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))

    log.info("writing %s with external data", dst.name)
    for tensor in graph.initializer:
        if not tensor.HasField("raw_data"):          # scalars written as typed fields
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
        if canonical_of(tensor.name) is not None or len(tensor.raw_data) >= INLINE_LIMIT:
            set_external_data(tensor, data_file)
    onnx.save_model(proto, str(dst))
    (dst.parent / data_file).chmod(0o644)            # onnx creates it owner-only
    with_offsets = {s.name for s in sites if bits[s.name] == 4 and quantized4[s.name].float_zeros}
    quantized_bytes = sum(site_bytes(s, bits[s.name], block, s.name in with_offsets, scale_bytes) for s in sites)
    return {"bits": {s.name: bits[s.name] for s in sites},
            "bits_per_weight": round(quantized_bytes * 8 / max(1, sum(s.numel for s in sites)), 4),
            "budget_bits_per_weight": None if budget is None else round(budget, 4),
            "zero_points": {"float offsets": len(with_offsets), "uint8": len(sites) - len(with_offsets)},
            "float_offsets": sorted(with_offsets),
            "embedding": "GatherBlockQuantized" if any(s.gathers for s in sites) else "fp32",
            "tied_lm_head": "stored once" if any(LM_HEAD.name in s.drop and s.gathers for s in sites) else None}


def _site_initializers(site: Site, q: Quantized, out: list, dtype: type, casts: "Float32Casts") -> dict[str, str]:
    """The site's initializers, and the names its nodes read (a Cast's output for fp16 ones)."""
    names = {"B": f"{site.name}_Q{q.bits}"}
    out.append(numpy_helper.from_array(q.packed_q(), names["B"]))
    out.append(numpy_helper.from_array(q.scales.astype(dtype), f"{site.name}_scales"))
    names["scales"] = casts.of(f"{site.name}_scales") if dtype is not np.float32 else f"{site.name}_scales"
    if q.float_zeros:
        out.append(numpy_helper.from_array(offsets_of(q), f"{site.name}_offsets"))
        names["offsets"] = casts.of(f"{site.name}_offsets")
        q = Quantized(q.q, q.scales, np.full(q.scales.shape, OFFSET_ZERO, np.uint8), q.bits, q.block, q.k)
    names["zeros"] = f"{site.name}_zero_points"
    out.append(numpy_helper.from_array(q.packed_zeros(), names["zeros"]))
    return names


def offsets_of(q: Quantized) -> np.ndarray:
    """[n_blocks, N] fp16: with w = (q - z) * s per block, w = q * s + m with m = -z * s, so beside a
    MatMulNBits with integer zero point 0 (OFFSET_ZERO) the rest is one constant per block, applied to
    the block's input sum. m is the block's minimum, stored in fp16 as llama.cpp's q4_1 stores it (d
    and m both fp16: a q4_1 grid is held exactly) and cast to fp32 in the graph, which onnxruntime
    folds when the session loads; the quantiser refits the scales for the rounded offsets."""
    return np.ascontiguousarray((q.scales * (OFFSET_ZERO - q.zeros.astype(np.float32))).T.astype(np.float16))


def round_offsets(q: Quantized, w: np.ndarray, scale_dtype: type = np.float32) -> Quantized:
    """``q`` (float zero points) with its offsets rounded to fp16 as ``offsets_of`` stores them, and
    each block's scale refitted by least squares for the rounded offset (codes kept), then rounded to
    ``scale_dtype``: what the graph computes is then what ``dequantize`` says."""
    n, nb, block = q.q.shape
    l = q.q.astype(np.float32) - OFFSET_ZERO                                      # [N, nb, block]
    o = (q.scales * (OFFSET_ZERO - q.zeros)).astype(np.float16).astype(np.float32)   # [N, nb]
    pad = nb * block - w.shape[1]
    x = np.pad(w, ((0, 0), (0, pad)), mode="edge").reshape(n, nb, block) if pad else w.reshape(n, nb, block)
    if pad:
        l = l.copy()
        l[:, -1, block - pad:] = 0.0                   # the padding does not exist in the product
    den = (l * l).sum(-1)
    s = np.where(den > 0, ((x - o[..., None]) * l).sum(-1) / np.where(den > 0, den, 1), q.scales)
    s = round_scale(np.where(s > 0, s, q.scales), scale_dtype)
    zeros = (OFFSET_ZERO - o / s).astype(np.float32)
    return Quantized(q.q, s, zeros, q.bits, q.block, q.k)


class Float32Casts:
    """One Cast to fp32 per fp16 initializer (scales, offsets), placed first in the node list;
    onnxruntime folds them into fp32 constants when the session loads."""

    def __init__(self):
        self.nodes: dict[str, onnx.NodeProto] = {}

    def of(self, initializer: str) -> str:
        if initializer not in self.nodes:
            self.nodes[initializer] = helper.make_node("Cast", [initializer], [f"{initializer}_fp32"],
                                                       name=f"{initializer}_fp32", to=onnx.TensorProto.FLOAT)
        return self.nodes[initializer].output[0]

    def insert_into(self, graph: onnx.GraphProto) -> None:
        nodes = list(self.nodes.values()) + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)


class BlockSums:
    """The per-block input sums of the offsets encoding: ``x @ J`` with J [K, n_blocks] of ones on each
    block's rows (works at any rank of x, partial last block included), computed once per input and
    shared by every MatMulNBits reading it (q|k|v and gate|up read one input each)."""

    def __init__(self, block: int, initializers: list):
        self.block, self.initializers = block, initializers
        self.sums: dict[tuple[str, int], onnx.NodeProto] = {}   # (input, K) -> the node computing its sums
        self.after: dict[str, list] = {}                        # MatMulNBits output -> offset MatMul, Add
        self.made: dict[int, str] = {}                          # K -> J's initializer

    def ones(self, k: int) -> str:
        if k not in self.made:
            nb = -(-k // self.block)
            j = np.zeros((k, nb), np.float32)
            j[np.arange(k), np.arange(k) // self.block] = 1.0
            self.made[k] = f"block_sums_{k}x{nb}"
            self.initializers.append(numpy_helper.from_array(j, self.made[k]))
        return self.made[k]

    def add(self, nbits: onnx.NodeProto, x: str, k: int, offsets: str, out: str) -> None:
        """``out`` = nbits' result (its output) + blocksums(x) @ offsets (an fp32 value's name)."""
        if (x, k) not in self.sums:
            self.sums[(x, k)] = helper.make_node("MatMul", [x, self.ones(k)], [f"{x}_block_sums{k}"],
                                                 name=f"{x}_block_sums{k}")
        s = self.sums[(x, k)].output[0]
        base = nbits.name or out
        self.after[nbits.output[0]] = [
            helper.make_node("MatMul", [s, offsets], [f"{out}_offset"], name=f"{base}_offset"),
            helper.make_node("Add", [nbits.output[0], f"{out}_offset"], [out], name=f"{base}_add_offset")]

    def insert_into(self, graph: onnx.GraphProto) -> None:
        """Each sum right after the node that makes its input (first, for a graph input); each offset
        MatMul and Add right after its MatMulNBits: the node list stays topologically sorted."""
        by_input: dict[str, list] = {}
        for (x, _), node in self.sums.items():
            by_input.setdefault(x, []).append(node)
        produced = {o for n in graph.node for o in n.output}
        ordered = [n for x, nodes in by_input.items() if x not in produced for n in nodes]
        for node in graph.node:
            ordered.append(node)
            for o in node.output:
                ordered.extend(by_input.get(o, []))
                ordered.extend(self.after.get(o, []))
        del graph.node[:]
        graph.node.extend(ordered)


def _to_matmulnbits(node: onnx.NodeProto, names: dict, q: Quantized, accuracy_level: int, sums: BlockSums) -> None:
    n, nb, _ = q.q.shape
    k = q.k or nb * q.block
    out = node.output[0]
    offsets = "offsets" in names
    inputs = [node.input[0], names["B"], names["scales"], names["zeros"]]
    new = helper.make_node("MatMulNBits", inputs, [f"{out}_nbits" if offsets else out],
                           name=node.name.removesuffix("MatMul") + "MatMulNBits"
                           if node.name.endswith("MatMul") else node.name, domain=MS_DOMAIN,
                           K=k, N=n, bits=q.bits, block_size=q.block, accuracy_level=accuracy_level)
    if offsets:
        sums.add(new, node.input[0], k, names["offsets"], out)
    node.CopyFrom(new)


def _to_gather_quantized(graph, node: onnx.NodeProto, names: dict, q: Quantized, out: list) -> None:
    n, nb, _ = q.q.shape
    shape_name = f"{names['B']}_rows_shape"
    rows = f"{names['B']}_rows"
    out.append(numpy_helper.from_array(np.array([n, nb * q.block * q.bits // 8], np.int64), shape_name))
    reshape = helper.make_node("Reshape", [names["B"], shape_name], [rows], name=node.name + "_rows")
    gather = helper.make_node("GatherBlockQuantized", [rows, node.input[1], names["scales"], names["zeros"]],
                              list(node.output), name=node.name.removesuffix("Gather") + "GatherBlockQuantized"
                              if node.name.endswith("Gather") else node.name, domain=MS_DOMAIN,
                              gather_axis=0, quantize_axis=1, block_size=q.block, bits=q.bits)
    at = list(graph.node).index(node)
    node.CopyFrom(gather)
    graph.node.insert(at, reshape)
