"""genai_config.json: an exported folder described for onnxruntime-genai.

onnxruntime-genai (``og.Model(folder)``) reads the graph's IO names, the model's shape
and the generation defaults from ``genai_config.json``; without it it cannot bind the
state inputs (``Missing Input: past_context.0``). The file is derived from the folder's
IO declaration (``lmexport.json``'s IOSpecs, ``graph_io``): every name genai needs is
looked up by role, and per-layer names become the ``%d`` templates genai expects only
after the template is checked to reproduce the name of every layer.

What genai does with it (onnxruntime-genai 0.18, measured on the bundled model; see
docs/runtime.md, "Run it elsewhere"):

* ``model.type`` ``"llama"`` selects its decoder-only pipeline, which feeds
  ``input_ids``, ``attention_mask``, ``position_ids``, carries the keys/values and,
  found through ``past_conv_names`` / ``past_recurrent_names``, exactly one conv and one
  recurrent state per layer: Liquid-Metal's conv window and context sums. Their shapes
  must be static except the batch axis (they are).
* On the CPU it binds a layer's past and present conv/recurrent state to one buffer
  (the graph stays correct when an output aliases its input; a test checks this).
* ``search.past_present_share_buffer`` must be false: with true, genai gives the KV
  cache a fixed ``max_length`` shape, which the Attention node's shape check rejects.
* Its tokenizer applies no special tokens unless asked:
  ``tokenizer.update_options(add_special_tokens="true")`` makes it follow the folder's
  BOS rule (tokenizer.json's post-processor), as ``lmexport generate`` does.
* A batch is one array, and genai masks only trailing pads (``encode_batch`` pads on
  the right): prompts of one batch must be equally long.
"""
from __future__ import annotations

import json
from pathlib import Path

from ...errors import ExportError
from ...manifest import IOSpec, Manifest

GENAI_CONFIG_FILE = "genai_config.json"
GENAI_MODEL_TYPE = "llama"       # genai's decoder-only pipeline; the extra state is declared below
LAYER_TOKEN = "%d"               # genai formats per-layer names with printf

# IOSpec role -> genai_config key, for graph inputs and outputs
SINGLE_INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids"}
SINGLE_OUTPUTS = {"logits": "logits"}
STATE_INPUTS = {"key": "past_key_names", "value": "past_value_names",
                "conv": "past_conv_names", "context": "past_recurrent_names"}
STATE_OUTPUTS = {"key": "present_key_names", "value": "present_value_names",
                 "conv": "present_conv_names", "context": "present_recurrent_names"}


def layer_template(specs: list[IOSpec], num_layers: int) -> str:
    """The printf template that names the spec of every layer ``0..num_layers-1``.

    The candidates are layer 0's name with one occurrence of ``0`` replaced by ``%d``;
    the one that reproduces every layer's name is it. No template, or two, is an error:
    genai cannot address such names."""
    by_layer = {s.layer: s.name for s in specs}
    role = specs[0].role if specs else "?"
    if sorted(by_layer) != list(range(num_layers)):
        raise ExportError(f"genai_config: the {role} state is not declared once for each of {num_layers} layers")
    first = by_layer[0]
    found = set()
    for at in (i for i, ch in enumerate(first) if ch == "0"):
        template = first[:at].replace("%", "%%") + LAYER_TOKEN + first[at + 1:].replace("%", "%%")
        if all(template % layer == name for layer, name in by_layer.items()):
            found.add(template)
    if len(found) != 1:
        raise ExportError(f"genai_config: the {role} names ({first}, ...) do not follow one layer template",
                          hint="onnxruntime-genai addresses per-layer state through one %d template per kind")
    return found.pop()


def _names(specs: list[IOSpec], single: dict[str, str], state: dict[str, str], num_layers: int) -> dict[str, str]:
    out = {}
    for role, key in single.items():
        spec = next((s for s in specs if s.role == role), None)
        if spec is not None:
            out[key] = spec.name
    for role, key in state.items():
        of_role = [s for s in specs if s.role == role]
        if of_role:
            out[key] = layer_template(of_role, num_layers)
    return out


def genai_config(manifest: Manifest) -> dict:
    """The genai_config.json object for a folder described by ``manifest``."""
    c = manifest.config
    tok = manifest.tokenizer
    if manifest.input("input_ids") is None or not any(s.role == "logits" for s in manifest.outputs):
        raise ExportError("genai_config: the graph declares no input_ids input or no logits output")
    missing = [k for k in ("vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads",
                           "num_hidden_layers", "max_position_embeddings") if not isinstance(c.get(k), int)]
    if missing:
        raise ExportError("genai_config: the source config lacks " + ", ".join(missing))
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    eos = [int(i) for i in tok.get("eos_token_ids") or []]
    model = {
        "type": GENAI_MODEL_TYPE,
        "vocab_size": c["vocab_size"],
        "context_length": c["max_position_embeddings"],
        "decoder": {
            "filename": manifest.model_file,
            "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
            "head_size": head_dim,
            "hidden_size": c["hidden_size"],
            "num_attention_heads": c["num_attention_heads"],
            "num_hidden_layers": manifest.num_layers,
            "num_key_value_heads": c["num_key_value_heads"],
            "inputs": _names(manifest.inputs, SINGLE_INPUTS, STATE_INPUTS, manifest.num_layers),
            "outputs": _names(manifest.outputs, SINGLE_OUTPUTS, STATE_OUTPUTS, manifest.num_layers),
        },
    }
    for key, value in (("bos_token_id", tok.get("bos_token_id")), ("pad_token_id", tok.get("pad_token_id")),
                       ("eos_token_id", eos[0] if len(eos) == 1 else eos or None)):
        if value is not None:
            model[key] = value
    search = {"max_length": c["max_position_embeddings"], "do_sample": False, "num_beams": 1,
              # true makes genai allocate the KV cache at max_length, which the graph's Attention rejects
              "past_present_share_buffer": False}
    return {"model": model, "search": search}


def write_genai_config(manifest: Manifest, folder: Path) -> Path:
    path = Path(folder) / GENAI_CONFIG_FILE
    path.write_text(json.dumps(genai_config(manifest), indent=2) + "\n", encoding="utf-8")
    return path
