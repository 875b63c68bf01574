"""Field-by-field check of an lmexport.json before anything is built from it.

A manifest can be damaged or hostile; every value the runtime later uses to name,
shape or allocate something is checked here for its type and range, and every
problem is collected so one error lists them all. Torch-free (the runtime imports it).
"""
from __future__ import annotations

import math
from typing import Any

from lmexport.errors import ConfigError
from lmexport.safe_paths import name_problem

KV_ROLES = ("key", "value")                          # states with one row per past position
STATE_ROLES = KV_ROLES + ("conv", "context")
IO_ROLES = ("input_ids", "attention_mask", "position_ids")   # what a caller feeds each call (the one spelling)
ROLES = IO_ROLES + ("logits",) + STATE_ROLES
DTYPES = ("int64", "float32", "float16")
AXES = ("batch_size", "sequence_length", "total_sequence_length", "past_sequence_length",
        "present_sequence_length")
STATE_AXES = ("batch_size", "past_sequence_length")     # what the runtime knows when it builds zeros
MODES = ("streaming", "legacy")
FLOAT_TYPES = ("fp32", "fp16")
QUANT_METHODS = ("none", "int8", "int4")
# Sanity bounds: a manifest outside them is rejected before anything is allocated.
MAX_LAYERS = 1024
MAX_DIM = 1 << 20
MAX_STATE_ELEMENTS = 1 << 28        # per sequence and state tensor (1 GiB of float32)
MAX_OPSET = 64


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _spec_problems(key: str, index: int, item: Any, num_layers: int | None) -> list[str]:
    where = f"{key}[{index}]"
    if not isinstance(item, dict):
        return [f"{where} is not an object"]
    out = []
    name = item.get("name")
    if not isinstance(name, str) or not name:
        out.append(f"{where}: name {name!r} is not a name")
    else:
        where = f"{key} {name!r}"
    if item.get("dtype") not in DTYPES:
        out.append(f"{where}: dtype {item.get('dtype')!r} unknown")
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:
        out.append(f"{where}: role {role!r} unknown")
        role = None
    shape = item.get("shape")
    state = role in STATE_ROLES
    if not isinstance(shape, list) or not 1 <= len(shape) <= 8:
        out.append(f"{where}: shape {shape!r} is not a list of 1 to 8 dimensions")
    else:
        allowed = STATE_AXES if state and key == "inputs" else AXES
        for d in shape:
            if isinstance(d, str):
                if d not in allowed:
                    out.append(f"{where}: axis name {d!r} unknown here (known: {', '.join(allowed)})")
            elif not _is_int(d) or not 0 <= d <= MAX_DIM:
                out.append(f"{where}: dimension {d!r} out of range 0..{MAX_DIM}")
        fixed = [d for d in shape if _is_int(d) and 0 <= d <= MAX_DIM]
        if state and math.prod(fixed) > MAX_STATE_ELEMENTS:
            out.append(f"{where}: a state of {math.prod(fixed):,} elements per sequence is too large")
    if state:
        layer = item.get("layer")
        if not _is_int(layer) or not 0 <= layer < (num_layers or MAX_LAYERS):
            out.append(f"{where}: layer {layer!r} out of range")
        if key == "inputs" and (item.get("init") != "zeros" or not isinstance(item.get("present"), str)):
            out.append(f"{where}: state input needs init=zeros and a present output")
    return out


def _io_problems(data: dict, num_layers: int | None) -> list[str]:
    out = []
    names: dict[str, set[str]] = {}
    for key in ("inputs", "outputs"):
        items = data.get(key)
        if not isinstance(items, list) or not items:
            out.append(f"{key} missing")
            continue
        if len(items) > 8 * MAX_LAYERS:
            out.append(f"{key}: {len(items)} entries")
            continue
        for i, item in enumerate(items):
            out += _spec_problems(key, i, item, num_layers)
        good = [it for it in items if isinstance(it, dict) and isinstance(it.get("name"), str)]
        names[key] = {it["name"] for it in good}
        if len(names[key]) != len(good):
            out.append(f"{key}: a name is used twice")
        roles = [it.get("role") for it in good]
        for role in (IO_ROLES if key == "inputs" else ("logits",)):
            if roles.count(role) != 1:
                out.append(f"{key}: needs exactly one {role}, found {roles.count(role)}")
    for item in data.get("inputs") if isinstance(data.get("inputs"), list) else ():
        present = item.get("present") if isinstance(item, dict) else None
        if isinstance(present, str) and "outputs" in names and present not in names["outputs"]:
            out.append(f"{item.get('name')}: its present output {present} is not an output")
    return out


def _token_problems(tokenizer: Any, vocab: int | None) -> list[str]:
    if tokenizer is None:
        return []
    if not isinstance(tokenizer, dict):
        return ["tokenizer is not an object"]
    out = []
    top = (vocab or 1 << 31) - 1
    eos = tokenizer.get("eos_token_ids")
    if eos is not None and not isinstance(eos, list):
        out.append(f"tokenizer.eos_token_ids {eos!r} is not a list")
        eos = []
    for name, value in [("bos_token_id", tokenizer.get("bos_token_id")),
                        ("pad_token_id", tokenizer.get("pad_token_id"))] + [("eos_token_ids", e) for e in eos or ()]:
        if value is not None and (not _is_int(value) or not 0 <= value <= top):
            out.append(f"tokenizer.{name} {value!r} is not a token id in 0..{top}")
    return out


def _config_problems(source: Any) -> tuple[list[str], int | None]:
    if source is None:
        return [], None
    if not isinstance(source, dict):
        return ["source is not an object"], None
    config = source.get("config")
    if source.get("weights_hash") is not None and not isinstance(source.get("weights_hash"), str):
        return ["source.weights_hash is not a string"], None
    if config is None or config == {}:
        return [], None
    if not isinstance(config, dict):
        return ["source.config is not an object"], None
    from lmexport.config import LiquidMetalConfig   # torch-free

    try:
        parsed = LiquidMetalConfig.from_dict(config)
    except ConfigError as exc:
        return [f"source.config: {exc.message}"], None
    return [], parsed.vocab_size


def _files_problems(files: Any) -> list[str]:
    if files is None:
        return []
    if not isinstance(files, dict):
        return ["files is not an object"]
    out = []
    for name, info in files.items():
        problem = name_problem(name, flat=True)
        if problem or name.startswith("."):
            out.append(f"files: {problem or repr(name) + ' is a hidden name'}")
        elif not isinstance(info, dict) or not _is_int(info.get("bytes")) or info["bytes"] < 0 \
                or not isinstance(info.get("sha256", ""), str):
            out.append(f"files: {name}: needs a byte count (and a sha256 string)")
    return out


def manifest_problems(data: dict) -> list[str]:
    """Everything wrong with a manifest dict (format and version already checked)."""
    problems = []
    n = data.get("num_layers")
    if not _is_int(n) or not 0 < n <= MAX_LAYERS:
        problems.append(f"num_layers {n!r} out of range 1..{MAX_LAYERS}")
        n = None
    if not isinstance(data.get("mode"), str) or data.get("mode") not in MODES:
        problems.append(f"mode {data.get('mode')!r} unknown")
    if data.get("dtype", "fp32") not in FLOAT_TYPES:
        problems.append(f"dtype {data.get('dtype')!r} unknown (fp32 or fp16)")
    quant = data.get("quantization")
    if quant is not None and (not isinstance(quant, dict) or quant.get("method", "none") not in QUANT_METHODS):
        problems.append(f"quantization {quant!r} unknown")
    opset = data.get("opset", 0)
    if not _is_int(opset) or not 0 <= opset <= MAX_OPSET:
        problems.append(f"opset {opset!r} is not an opset number")
    preset = data.get("tolerance_preset")
    if preset is not None and not isinstance(preset, str):
        problems.append(f"tolerance_preset {preset!r} is not a preset name")
    for key in ("fused_ops", "pack_matmuls"):
        if not isinstance(data.get(key, False), bool):
            problems.append(f"{key} {data.get(key)!r} is not true or false")
    for key in ("model_file", "data_file"):
        value = data.get(key, "model.onnx")
        problem = name_problem(value, flat=True)
        if problem:
            problems.append(f"{key}: {problem}")
    for key in ("versions", "probes", "initializers"):
        value = data.get(key)
        if value is not None and not isinstance(value, dict):
            problems.append(f"{key} is not an object")
    probes = data.get("probes")
    if isinstance(probes, dict) and not all(isinstance(k, str) and isinstance(v, str) for k, v in probes.items()):
        problems.append("probes must map names to graph value names")
    config_problems, vocab = _config_problems(data.get("source"))
    problems += config_problems
    problems += _io_problems(data, n)
    problems += _token_problems(data.get("tokenizer"), vocab)
    problems += _files_problems(data.get("files"))
    return problems
