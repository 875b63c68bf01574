"""From the PyTorch reference model to an ONNX graph: the export rewrites and the IR clean-up.

Export rewrites (STYLE.md, rule 7), local to this module and applied to a copy:

* ``ExportLinear`` replaces ``nn.Linear``: it stores W^T ([in, out]) as its parameter and
  computes ``x @ W^T``. The graph then holds ``MatMul(x, <initializer>)`` with the
  initializer named after the canonical tensor, which the int8/int4 quantizers need and
  which leaves the optimizer no Transpose to fold into an anonymous constant. For fp32
  the copy shares storage with the original (W^T is a view), so nothing is duplicated.
  For fp16 the copy is converted, except the adaptive norms' weights (kept fp32).
* ``OnnxExportWrapper`` flattens the state lists into one tensor per graph input and
  returns every layer module output after the real outputs. Those extra outputs are
  dropped from the graph outputs after export; their values stay in the graph under
  the probe names ``/model/layers.N/<module>/output``.

After ``torch.onnx.export(dynamo=True)``, on the in-memory IR: initializers lose the
wrapper's ``model.`` prefix (so they carry canonical names), graph axes get the names
the IOSpecs declare, and nodes get readable names from their module scope
(``/model/layers.3/self_attn/q_proj/MatMul``). With ``pack``, pack.py then merges the
MatMuls of each declared pack (``/model/layers.3/self_attn/qkv_proj/MatMul`` and ``/Split``).
Last, the exporter's per-node metadata (module scopes, FX node, Python stack trace with
the exporting machine's file paths) is dropped: once the names are given it is only
bytes (a fifth of the bundled int4 folder) and a leak of local paths into a shared file.
"""
from __future__ import annotations

import ast
import contextlib
import copy
import logging
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmexport.errors import ExportError
from lmexport.manifest import IOSpec
from lmexport.modeling.model import LAYER_MODULES, LiquidMetalForCausalLM
from lmexport.modeling.modules import AdaptiveRMSNorm

log = logging.getLogger(__name__)

WRAPPER_PREFIX = "model."           # the wrapper holds the model as ``self.model``
SCOPE_KEY = "pkg.torch.onnx.name_scopes"
# Sizes of the example inputs the graph is traced with: all > 1 and all different, so
# torch.export keeps every dynamic axis symbolic (0 and 1 would be specialised).
TRACE_AXES = {"batch_size": 3, "sequence_length": 7, "past_sequence_length": 5, "total_sequence_length": 12}


def probe_value_name(layer: int, module: str) -> str:
    """The graph value that holds one layer module's output (LAYER_MODULES)."""
    return f"/model/layers.{layer}/{module}/output"


def probe_names(num_layers: int) -> dict[str, str]:
    """``"layers.N.<module>"`` (the key of PyTorch's intermediates) -> graph value name."""
    return {f"layers.{i}.{m}": probe_value_name(i, m) for i in range(num_layers) for m in LAYER_MODULES}


class ExportLinear(nn.Module):
    """``nn.Linear`` with its weight stored transposed ([in, out]): y = x @ weight (+ bias)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().t(), requires_grad=False)   # (in, out) view
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight)                                  # (..., out)
        return y if self.bias is None else y + self.bias


def export_copy(model: LiquidMetalForCausalLM, dtype: torch.dtype, fused: bool = False) -> LiquidMetalForCausalLM:
    """A copy of ``model`` in ``dtype`` with every nn.Linear swapped for ExportLinear and,
    with ``fused``, attention and norms swapped for their fused forms (onnx_fused).

    fp32 shares every parameter with ``model`` (no data copied); another dtype copies."""
    if dtype == torch.float32:
        memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
        view = copy.deepcopy(model, memo)
    else:
        view = copy.deepcopy(model).to(dtype)
        for module in view.modules():
            # The adaptive norms multiply their weight in fp32 (weight.float()); storing it in
            # fp32 keeps it a named initializer instead of a folded, anonymous Cast result.
            if isinstance(module, AdaptiveRMSNorm):
                module.weight.data = module.weight.data.float()
    for module in list(view.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, ExportLinear(child))
    if fused:
        from lmexport.exporters.onnx.fused import fuse_modules
        fuse_modules(view)
    return view.eval()


class OnnxExportWrapper(nn.Module):
    """Graph signature: (input_ids, attention_mask, position_ids, [state...]) ->
    (outputs..., probe values...). The state tensors arrive in the order of the state
    IOSpecs and the outputs leave in the order of the output IOSpecs; each is matched
    to the model's by its role and layer, never by position."""

    def __init__(self, model: LiquidMetalForCausalLM, inputs: list[IOSpec], outputs: list[IOSpec]):
        super().__init__()
        self.model = model
        self.state_specs = [(s.role, s.layer) for s in inputs if s.is_state]
        self.output_specs = [(s.role, s.layer) for s in outputs]

    def forward(self, input_ids, attention_mask, position_ids, state: list[torch.Tensor]):
        c = self.model.config
        layers = range(c.num_hidden_layers)
        past = dict(zip(self.state_specs, state))
        out = self.model(input_ids, attention_mask, position_ids,
                         past_key_values=[(past["key", i], past["value", i]) for i in layers],
                         past_conv=[past["conv", i] for i in layers] if c.streaming else None,
                         past_context=[past["context", i] for i in layers] if c.streaming else None,
                         return_intermediates=True)
        produced = {("logits", None): out.logits}
        for i, (k, v) in enumerate(out.present_key_values):
            produced["key", i], produced["value", i] = k, v
        for i in layers if c.streaming else ():
            produced["conv", i], produced["context", i] = out.present_conv[i], out.present_context[i]
        results = [produced[key] for key in self.output_specs]
        results += [out.intermediates[key] for key in probe_names(c.num_hidden_layers)]
        return tuple(results)


_TORCH_DTYPES = {"int64": torch.int64, "float32": torch.float32, "float16": torch.float16}


def example_inputs(inputs: list[IOSpec]) -> tuple:
    """Trace inputs built from the IOSpecs: ones for the mask, positions after the past."""
    a = TRACE_AXES
    values = {}
    for spec in inputs:
        shape = spec.concrete_shape(a)
        if spec.role == "input_ids":
            values[spec.name] = torch.arange(shape[0] * shape[1]).reshape(shape) % 7
        elif spec.role == "attention_mask":
            values[spec.name] = torch.ones(shape, dtype=torch.int64)
        elif spec.role == "position_ids":
            start = a["past_sequence_length"]
            values[spec.name] = torch.arange(start, start + shape[1]).expand(shape).contiguous()
        else:
            values[spec.name] = torch.zeros(shape, dtype=_TORCH_DTYPES[spec.dtype])
    plain = [values[s.name] for s in inputs if not s.is_state]
    state = [values[s.name] for s in inputs if s.is_state]
    return (*plain, state)


def dynamic_shapes(inputs: list[IOSpec]) -> tuple:
    """torch.export dynamic shapes, read off the IOSpecs: every named axis is dynamic."""
    from torch.export import Dim

    def spec_of(s: IOSpec) -> dict:
        return {i: Dim.DYNAMIC for i, d in enumerate(s.shape) if isinstance(d, str)}

    plain = [spec_of(s) for s in inputs if not s.is_state]
    state = [spec_of(s) for s in inputs if s.is_state]
    return (*plain, state)


@dataclass(frozen=True)
class TracedGraph:
    path: Path
    probes: dict[str, str]          # "layers.N.<module>" -> value name
    opset: int


def optimize_keeping_names(model) -> None:
    """torch.onnx's default optimisation (onnxscript's ``optimize_ir``) without its
    initializer de-duplication: tensors that happen to hold equal values (a converted
    checkpoint's zero module weights, equal gate biases, all-ones norms) must keep their
    own canonical initializers, or parity and the initializer map cannot find them.
    For the same reason the rewrite that drops an all-zero Conv bias is left out."""
    import onnx_ir as ir
    from onnx_ir.passes import common as passes
    from onnxscript import rewriter
    from onnxscript.optimizer import _constant_folding

    ir.passes.Sequential(
        passes.InlinePass(),
        ir.passes.PassManager([
            _constant_folding.FoldConstantsPass(
                shape_inference=True, input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
                should_fold=lambda node: None),
            rewriter.RewritePass([r for r in rewriter._DEFAULT_REWRITE_RULES
                                  if not (getattr(r, "name", None) or "").startswith("RemoveOptionalBias")]),
            passes.RemoveUnusedNodesPass(),
            passes.RemoveUnusedFunctionsPass(),
            passes.RemoveUnusedOpsetsPass(),
        ], steps=2, early_stop=True),
        passes.RemoveUnusedNodesPass(),
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.LiftSubgraphInitializersToMainGraphPass(),
        passes.CommonSubexpressionEliminationPass(),
        passes.OutputFixPass(),
        passes.NameFixPass(),
    )(model)


def trace(model: LiquidMetalForCausalLM, path: Path, inputs: list[IOSpec], outputs: list[IOSpec],
          dtype: torch.dtype, opset: int, fused: bool = False, pack: bool = False) -> TracedGraph:
    """Export ``model`` to ``path`` (+ ``path``.data) with the declared graph IO; ``fused``
    writes attention and norms as opset-23 ops (onnx_fused, needs opset >= 23); ``pack``
    runs the MatMuls of each ``tensor_names.PACKS`` entry as one (pack.py)."""
    view = export_copy(model, dtype, fused)
    translations = {}
    if fused:
        from lmexport.exporters.onnx.fused import TRANSLATIONS as translations
    probes = probe_names(model.config.num_hidden_layers)
    wrapper = OnnxExportWrapper(view, inputs, outputs).eval()
    log.info("tracing the model with torch.export (opset %d)", opset)
    try:
        with torch.no_grad(), quiet("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export"):
            program = torch.onnx.export(
                wrapper, example_inputs(inputs), dynamo=True, opset_version=opset,
                input_names=[s.name for s in inputs],
                output_names=[s.name for s in outputs] + list(probes.values()),
                dynamic_shapes=dynamic_shapes(inputs), custom_translation_table=translations,
                optimize=False, verbose=False)
            optimize_keeping_names(program.model)
    except Exception as exc:  # torch.export raises many types; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed: {first}",
                          hint="rerun with --debug for the full trace") from exc
    graph = program.model.graph
    got_opset = program.model.opset_imports.get("", 0)
    if got_opset != opset:
        raise ExportError(f"the exporter produced opset {got_opset}, not the requested {opset}",
                          hint="choose another --opset")
    _drop_probe_outputs(graph, len(outputs), probes)
    _strip_initializer_prefix(graph)
    _name_axes(graph, inputs, outputs)
    _name_nodes(graph)
    if pack:
        from lmexport.exporters.onnx.pack import pack_matmuls
        pack_matmuls(program.model, model.config.num_hidden_layers)
    _drop_node_metadata(program.model)
    log.info("writing %s with external data", path.name)
    save_ir(program.model, path)
    del program, wrapper, view
    return TracedGraph(path, probes, opset)


# Initializers at least this large go to the data file even without a canonical name.
INLINE_LIMIT = 1024


def save_ir(model, path: Path) -> None:
    """Save with every canonical tensor (however small) and every large constant in one
    data file, ``<path>.data``; small anonymous constants (axes, shapes) stay inline,
    where ONNX shape inference can read them."""
    import onnx_ir as ir

    from lmexport.tensor_names import lookup, lookup_pack

    moved = [v for v in model.graph.initializers.values()
             if v.const_value is not None and (lookup(v.name) is not None or lookup_pack(v.name) is not None
                                               or v.const_value.nbytes >= INLINE_LIMIT)]
    external = ir.external_data.convert_tensors_to_external(
        [v.const_value for v in moved], base_dir=path.parent, relative_path=path.name + ".data")
    for value, tensor in zip(moved, external):
        value.const_value = tensor
    ir.save(model, path)


@contextlib.contextmanager
def quiet(*names: str, level: int = logging.ERROR):
    """Exporters and quantizers chatter (a line per folded constant or per node, warnings
    about optional packages): hold their loggers at ``level`` and their Python warnings
    silent for the duration, then restore them. Our own progress lines still show."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for lg, old in zip(loggers, levels):
            lg.setLevel(old)


# ---------------------------------------------------------------- IR clean-up passes

def _drop_probe_outputs(graph, n_outputs: int, probes: dict[str, str]) -> None:
    extra = list(graph.outputs)[n_outputs:]
    names = [v.name for v in extra]
    if names != list(probes.values()):
        raise ExportError("the exported graph's probe outputs are not the expected ones",
                          hint=f"got {names[:3]}...")
    del graph.outputs[n_outputs:]


def _strip_initializer_prefix(graph) -> None:
    for name in list(graph.initializers):
        if name.startswith(WRAPPER_PREFIX):
            graph.initializers[name].name = name[len(WRAPPER_PREFIX):]


_SYMBOL = re.compile(r"\b[su]\d+\b")


def _name_axes(graph, inputs: list[IOSpec], outputs: list[IOSpec]) -> None:
    """Graph IO axes take the IOSpec names; the exporter's symbols inside the graph follow."""
    import onnx_ir as ir

    symbols: dict[str, str] = {}
    for value, spec in zip(list(graph.inputs), inputs):
        for dim, want in zip(value.shape, spec.shape):
            got = getattr(dim, "value", None)
            if isinstance(want, str) and isinstance(got, str) and _SYMBOL.fullmatch(got):
                symbols.setdefault(got, want)
    for value, spec in list(zip(graph.inputs, inputs)) + list(zip(graph.outputs, outputs)):
        static = [(i, d) for i, (d, want) in enumerate(zip(value.shape, spec.shape))
                  if isinstance(want, str) and isinstance(d, int)]
        if static:
            raise ExportError(f"{spec.name}: axis {static[0][0]} was specialised to {static[0][1]} by the exporter",
                              hint="the graph would only run at that size")
        value.shape = ir.Shape(list(spec.shape))

    def rename(text: str) -> str:
        return _SYMBOL.sub(lambda m: symbols.get(m.group(0), m.group(0)), text)

    io = {id(v) for v in list(graph.inputs) + list(graph.outputs)}
    for node in graph:
        for value in node.outputs:
            if id(value) in io or value.shape is None:
                continue
            dims = [rename(d.value) if isinstance(getattr(d, "value", None), str) else d for d in value.shape]
            value.shape = ir.Shape(dims)


def _scope_path(node) -> str:
    """'/model/layers.3/self_attn/q_proj' from the exporter's module scopes, '' if none."""
    raw = node.metadata_props.get(SCOPE_KEY)
    if not raw:
        return ""
    try:
        scopes = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return ""
    modules = [s for s in scopes[:-1] if s]        # last entry is the fx node itself
    if not modules:
        return ""
    path = modules[-1]
    path = path[len(WRAPPER_PREFIX):] if path.startswith(WRAPPER_PREFIX) else ""
    return "/" + re.sub(r"/(\d+)(?=/|$)", r".\1", path.replace(".", "/")) if path else "/model"


def _drop_node_metadata(model) -> None:
    """Clear the metadata the exporter attaches to each node, subgraphs and functions included."""
    import onnx_ir as ir

    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        node.metadata_props.clear()
    for function in model.functions.values():
        for node in ir.traversal.RecursiveGraphIterator(function):
            node.metadata_props.clear()


def _name_nodes(graph) -> None:
    seen: Counter = Counter()
    for node in graph:
        base = f"{_scope_path(node) or ''}/{node.op_type}"
        seen[base] += 1
        node.name = base if seen[base] == 1 else f"{base}_{seen[base] - 1}"
