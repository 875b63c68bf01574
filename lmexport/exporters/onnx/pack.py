"""Fewer, larger MatMuls: the weights of one ``tensor_names.PACKS`` entry become one MatMul.

q, k and v read the same normed input, as do the MLP's gate and up. A decode step is
dominated by MatMul (MatMulNBits once quantized) nodes that each read a small weight, so
the pass replaces each such group with one MatMul over the members' weights placed side
by side ([in, sum of out], ``tensor_names.pack_columns``) and a Split that gives back each
member's output. The int8 and int4 quantizers then see one bigger MatMul per pack.

A graph pass on the traced float graph (onnx_ir, in memory, before it is saved and
before any quantization), run by ``graph.trace`` when ``OnnxExportOptions.pack_matmuls``
is set. Every name comes from the table: a pack is made only when all its members are
initializers of that name, each the constant weight (input B) of exactly one MatMul, and
those MatMuls read the same input tensor; otherwise that pack is left alone and the
reason logged at debug. The Split's outputs take the names of the MatMul outputs they
replace, so the rest of the graph (probes included) does not change. The packed tensor
is computed lazily, when the data file is written, so no layer's packed copy is held
longer than its write.
"""
from __future__ import annotations

import logging

import numpy as np

from lmexport.tensor_names import PACKS, PackRef, pack_columns

log = logging.getLogger(__name__)


def node_scope(ref: PackRef) -> str:
    """'/model/layers.3/self_attn/qkv_proj': the readable node-name scope of a pack, in
    the form ``graph._name_nodes`` gives the modules' nodes."""
    module = ref.name.removesuffix(".weight").split(".")
    parts = []
    for part in module:
        if part.isdigit() and parts:
            parts[-1] += "." + part
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def pack_matmuls(model, num_layers: int) -> list[str]:
    """Pack every declared pack of every layer in ``model`` (an onnx_ir Model whose
    initializers carry canonical names); returns the packed initializer names."""
    graph = model.graph
    order = list(graph.initializers)
    placed: dict[str, object] = {}          # first member's name -> the packed initializer
    for bid in range(num_layers):
        for pack in PACKS:
            ref = PackRef(pack, bid)
            plan = _plan(graph, ref)
            if isinstance(plan, str):
                log.debug("not packing %s: %s", ref.name, plan)
                continue
            placed[ref.members[0].name] = _rewrite(graph, ref, *plan)
    _keep_file_order(graph, order, placed)
    log.info("packed %d MatMul groups into one MatMul each", len(placed))
    return [v.name for v in placed.values()]


def _plan(graph, ref: PackRef):
    """(weights, matmuls) when the pack can be made, else why not (a string)."""
    if ref.name in graph.initializers:
        return "an initializer already has its name"
    weights, nodes = [], []
    for member in ref.members:
        value = graph.initializers.get(member.name)
        if value is None or value.const_value is None:
            return f"{member.name} is not an initializer with data"
        uses = list(value.uses())
        node = uses[0].node if len(uses) == 1 else None
        if node is None or node.op_type != "MatMul" or node.domain != "" or uses[0].idx != 1:
            return f"{member.name} is not the weight of exactly one MatMul"
        if len(value.shape) != 2:
            return f"{member.name} has shape {value.shape}, not [in, out]"
        if node.outputs[0].is_graph_output():
            return f"{node.name}'s output is a graph output"
        weights.append(value)
        nodes.append(node)
    if any(n.inputs[0] is not nodes[0].inputs[0] for n in nodes):
        return "its MatMuls read different inputs"
    if len({w.shape[0] for w in weights}) != 1 or len({w.dtype for w in weights}) != 1:
        return "its weights differ in input size or dtype"
    return weights, nodes


def _rewrite(graph, ref: PackRef, weights: list, nodes: list):
    import onnx_ir as ir

    widths = [int(w.shape[1]) for w in weights]
    tensors = [w.const_value for w in weights]
    shape = ir.Shape([int(weights[0].shape[0]), sum(widths)])
    packed = ir.Value(name=ref.name, shape=shape, type=ir.TensorType(weights[0].dtype),
                      const_value=ir.LazyTensor(
                          lambda: ir.tensor(pack_columns(ref, [t.numpy() for t in tensors])),
                          dtype=weights[0].dtype, shape=shape, name=ref.name))
    scope = node_scope(ref)
    split_sizes = ir.Value(name=f"{scope}/split_sizes", shape=ir.Shape([len(widths)]),
                           type=ir.TensorType(ir.DataType.INT64),
                           const_value=ir.tensor(np.array(widths, dtype=np.int64), name=f"{scope}/split_sizes"))
    graph.register_initializer(packed)
    graph.register_initializer(split_sizes)
    x = nodes[0].inputs[0]
    olds = [n.outputs[0] for n in nodes]
    y = ir.Value(name=f"{scope}/output",
                 shape=ir.Shape([*olds[0].shape[:-1], sum(widths)]) if olds[0].shape is not None else None,
                 type=olds[0].type)
    matmul = ir.Node("", "MatMul", [x, packed], outputs=[y], name=f"{scope}/MatMul")
    parts = [ir.Value(shape=o.shape, type=o.type) for o in olds]
    split = ir.Node("", "Split", [y, split_sizes], [ir.AttrInt64("axis", -1)], outputs=parts,
                    name=f"{scope}/Split")
    graph.insert_before(nodes[0], [matmul, split])
    names = [o.name for o in olds]
    for old, new in zip(olds, parts):
        old.replace_all_uses_with(new)
    graph.remove(nodes, safe=True)
    for w in weights:
        graph.initializers.pop(w.name)
    for new, name in zip(parts, names):
        new.name = name
    return packed


def _keep_file_order(graph, order: list[str], placed: dict) -> None:
    """Initializers in their traced order, each pack where its first member was (the data
    file follows this order, so one layer's weights stay adjacent on disk)."""
    values = dict(graph.initializers)
    ordered = []
    for name in order:
        if name in placed:
            ordered.append(placed[name])
        elif name in values:
            ordered.append(values[name])
    seen = {id(v) for v in ordered}
    ordered += [v for v in values.values() if id(v) not in seen]       # the split sizes
    graph.initializers.clear()
    for value in ordered:
        graph.register_initializer(value)
