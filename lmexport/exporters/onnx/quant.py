"""int8 and int4 variants of the fp32 graph, with onnxruntime.quantization.

* int8: dynamic quantization of every MatMul with a constant weight
  (``quantize_dynamic``, per-channel symmetric int8 weights, activations quantized
  per call); attention's activation x activation MatMuls stay fp32.
* int4: weight-only ``MatMulNBits`` (``MatMulNBitsQuantizer``): blocks of
  ``block_size`` weights along the input axis, symmetric, one fp32 scale per block,
  ``accuracy_level`` 4 (int8 compute on CPU). With ``lm_head_bits=8`` the output
  projection gets 8-bit blocks instead.

Everything else (norms, convolution, gates' sigmoid, softmax, context sums) stays fp32.
The result is saved with all weights in one external data file.
"""
from __future__ import annotations

import logging
from pathlib import Path

import onnx

from lmexport.tensor_names import LM_HEAD, lookup, lookup_pack

log = logging.getLogger(__name__)

INT8_SETTINGS = {"op_types": ["MatMul"], "weight_type": "int8", "per_channel": True, "const_weights_only": True}
# Initializer name suffixes the quantizers give a weight W (-> "W<suffix>"), and what they hold.
QUANT_SUFFIXES = {
    "_quantized": "int8 [in, out]",
    "_scale": "int8 scale",
    "_zero_point": "int8 zero point",
    "_Q4": "MatMulNBits 4-bit blocks [out, in/block, block/2]",
    "_Q8": "MatMulNBits 8-bit blocks [out, in/block, block]",
    "_scales": "MatMulNBits scales [out * in/block]",
    "_zero_points": "MatMulNBits zero points",
}


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


def quantize(src: Path, dst: Path, options, data_file: str) -> None:
    """Quantize the fp32 graph at ``src`` into ``dst`` (+ ``data_file`` beside it)."""
    from lmexport.exporters.onnx.graph import quiet

    with quiet("onnxruntime", "onnx", level=logging.WARNING):
        if options.quantize == "int8":
            model = _int8(src, dst)
        elif options.quantize == "int4":
            model = _int4(src, options)
        else:
            raise ValueError(f"unknown quantization {options.quantize!r}")
    log.info("writing %s with external data", dst.name)
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    from lmexport.exporters.onnx.graph import INLINE_LIMIT
    for tensor in model.graph.initializer:
        if not tensor.HasField("raw_data"):          # scalars the quantizer wrote as typed fields
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
        if canonical_of(tensor.name) is not None or len(tensor.raw_data) >= INLINE_LIMIT:
            set_external_data(tensor, data_file)
    onnx.save_model(model, str(dst))
    (dst.parent / data_file).chmod(0o644)            # onnx creates it owner-only


def _int8(src: Path, dst: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log.info("quantizing MatMul weights to int8 (dynamic)")
    tmp = dst.parent / ".int8"
    tmp.mkdir()
    quantize_dynamic(str(src), str(tmp / "model.onnx"), op_types_to_quantize=INT8_SETTINGS["op_types"],
                     per_channel=INT8_SETTINGS["per_channel"], weight_type=QuantType.QInt8,
                     use_external_data_format=True,
                     extra_options={"MatMulConstBOnly": INT8_SETTINGS["const_weights_only"]})
    model = onnx.load(str(tmp / "model.onnx"))              # with its data, to re-save as one file
    import shutil
    shutil.rmtree(tmp)
    return model


def _weight_node(model: onnx.ModelProto, weight: str) -> str | None:
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] == weight:
            return node.name
    return None


def _int4(src: Path, options) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    head = _weight_node(model, LM_HEAD.name)
    exclude = [head] if head and options.lm_head_bits == 8 else []
    log.info("quantizing MatMul weights to 4 bits (block %d, %s, accuracy level %d)", options.block_size,
             "symmetric" if options.int4_symmetric else "asymmetric", options.accuracy_level)
    q = MatMulNBitsQuantizer(model, bits=4, block_size=options.block_size, is_symmetric=options.int4_symmetric,
                             accuracy_level=options.accuracy_level, nodes_to_exclude=exclude)
    q.process()
    model = q.model.model
    if exclude:
        log.info("quantizing lm_head to 8 bits")
        q = MatMulNBitsQuantizer(model, bits=8, block_size=options.block_size, is_symmetric=True,
                                 accuracy_level=options.accuracy_level, nodes_to_include=exclude)
        q.process()
        model = q.model.model
    return model
