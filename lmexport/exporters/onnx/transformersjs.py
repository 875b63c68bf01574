"""The transformers.js target (``lmexport onnx --target transformers.js``).

transformers.js (``@huggingface/transformers`` 4.3, Node or browser) runs a decoder-only
graph through its generic ``generate()``; two of its conventions decide what a folder
needs (read from its source: ``getCacheNames`` in src/configs.js, ``getPastKeyValues``
in src/models/modeling_utils.js):

* After every call it carries each output ``present…`` to the input ``past…`` by a fixed
  renaming that knows keys/values (``present.N.key`` -> ``past_key_values.N.key``) and a
  few hybrid kinds (``present_conv`` -> ``past_conv``, ``present_recurrent`` ->
  ``past_recurrent``, ``present_ssm`` -> ``past_ssm``, ...). ``present_context.N``
  would become ``past_key_values_context.N``, an input the graph does not have. So this
  target names the context sums the ``recurrent`` state (``STATE_NAMES``: the graph IO
  declaration, ``graph_io``, takes its names from there; lmexport.json and
  genai_config.json follow). Everything else is the default folder, byte for byte.
* Before the first call it creates zero states only for the names its model-type table
  lists, and ``liquid_metal`` is not in it. Without changing transformers.js that takes
  code at run time: ``js/liquid_metal.mjs`` (copied into the folder, ``SHIM_FILE``)
  loads the folder with the generic decoder class and gives ``generate()`` the zero
  state that lmexport.json declares. docs/runtime.md has the upstream change that would
  make it unnecessary.

config.json stays the true Liquid-Metal config (``model_type: liquid_metal``): Python
readers are never told it is another model.

The target also runs in browsers (examples/web/). transformers.js's web build imports
onnxruntime-web's WebGPU build, and its WebAssembly kernels (the asyncify build, what a
stock transformers.js web app runs on every device) are not all of onnxruntime's:
``BROWSER_MISSING_OPS`` lists what tests/exporters/onnx/test_browser.py found missing there
(each entry is checked to fail in Chromium, so a newer onnxruntime-web that gains one is
noticed), and ``check_browser_ops`` refuses a graph of this target that uses one. Found to
run there: every op of the fp32 and int4 folders (opset-23 Attention, RotaryEmbedding,
RMSNormalization, MatMulNBits with 4 and 8 bits) and the standard-op form of a blocked
8-bit embedding (Gather, then DequantizeLinear with ``block_size``). (onnxruntime-web's
plain WebAssembly build, which examples/web/ loads for device=wasm, has GatherBlockQuantized.)
"""
from __future__ import annotations

import shutil
from importlib.resources import as_file, files
from pathlib import Path

from lmexport.errors import ExportError

TARGET = "transformers.js"
SHIM_FILE = "liquid_metal.mjs"
# (past input, present output) per state kind, over the default names; {layer} is the layer
STATE_NAMES = {"context": ("past_recurrent.{layer}", "present_recurrent.{layer}")}
# (domain, op type) -> what to use instead; onnxruntime-web 1.31.0-dev (the lockfile's) WebGPU build in Chromium
BROWSER_MISSING_OPS = {
    ("com.microsoft", "GatherBlockQuantized"):
        "keep the embedding in float, or use Gather + DequantizeLinear(block_size) (8 bits), which run there",
}


def browser_safe(options):
    """The export options for this target with what the browser lacks turned off: a quantised folder
    keeps its token embedding in float (no GatherBlockQuantized; the tied head is then stored in
    4/8-bit MatMulNBits beside it), said in the log. Other targets' options are returned as they are."""
    import dataclasses
    import logging

    if options.target != TARGET or options.quantize not in ("int4", "int8") or not options.quantize_embeddings:
        return options
    logging.getLogger(__name__).warning(
        "--target %s: the token embedding stays in float (onnxruntime-web's WebGPU build, which "
        "transformers.js loads, has no GatherBlockQuantized)", TARGET)
    return dataclasses.replace(options, quantize_embeddings=False)


def check_browser_ops(graph) -> None:
    """Refuse a graph (``onnx.GraphProto``) with an op that onnxruntime-web cannot run."""
    found = sorted({(n.domain or "", n.op_type) for n in graph.node} & set(BROWSER_MISSING_OPS))
    if found:
        raise ExportError(f"--target {TARGET} folders run in browsers, whose onnxruntime-web has no "
                          + "; ".join(f"{d + '.' if d else ''}{op} ({BROWSER_MISSING_OPS[d, op]})" for d, op in found))


def write_shim(folder: Path) -> Path:
    """Copy the JavaScript loader (package data) into ``folder``."""
    target = Path(folder) / SHIM_FILE
    with as_file(files(__package__).joinpath("js", SHIM_FILE)) as source:
        shutil.copyfile(source, target)
    return target
