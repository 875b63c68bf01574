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
"""
from __future__ import annotations

import shutil
from importlib.resources import as_file, files
from pathlib import Path

TARGET = "transformers.js"
SHIM_FILE = "liquid_metal.mjs"
# (past input, present output) per state kind, over the default names; {layer} is the layer
STATE_NAMES = {"context": ("past_recurrent.{layer}", "present_recurrent.{layer}")}


def write_shim(folder: Path) -> Path:
    """Copy the JavaScript loader (package data) into ``folder``."""
    target = Path(folder) / SHIM_FILE
    with as_file(files(__package__).joinpath("js", SHIM_FILE)) as source:
        shutil.copyfile(source, target)
    return target
