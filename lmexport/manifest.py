"""lmexport.json: the self-description of an exported ONNX folder.

The exporter writes it; the runtime and parity read graph input/output names,
shapes, dtypes and state initialisation from it instead of hard-coding them.
Torch-free: the runtime imports this module.

Layout (format_version 1)::

    {
      "format": "lmexport-onnx", "format_version": 1,
      "model_file": "model.onnx", "data_file": "model.onnx.data",
      "mode": "streaming" | "legacy",
      "dtype": "fp32" | "fp16",
      "quantization": {"method": "none" | "int8" | "int4", ...options},
      "opset": 23,
      "fused_ops": true,        # opset-23 Attention/RotaryEmbedding/RMSNormalization (false: plain ops)
      "pack_matmuls": true,     # q|k|v and gate|up each one MatMul over a packed initializer (tensor_names.PACKS)
      "tolerance_preset": "int4", # the preset the export was validated with (lmexport.compare.tolerances)
      "source": {"weights_hash": "sha256:...", "config": {...config.json...}},
      "num_layers": N,
      "inputs":  [IOSpec...],   # graph inputs, in graph order
      "outputs": [IOSpec...],   # graph outputs, in graph order
      "files": {"model.onnx": {"bytes": n, "sha256": "..."}, ...},
      "tokenizer": {"bos_token_id": 1, "eos_token_ids": [2], "pad_token_id": 0},
      "versions": {"lmexport": ..., "torch": ..., "onnx": ..., "onnxruntime": ...},
      "probes": {"layers.0.norm_in": "/model/layers.0/norm_in/output", ...},
      "initializers": {"<ONNX initializer name>": {"tensor": "<canonical name>", "layout": "..."},
                       "<packed initializer name>": {"pack": "<pack name>", "layout": "...",
                                                     "members": [{"tensor": "<canonical name>", "out": [0, 64]}, ...]}}
    }

``probes`` (optional) maps each layer module output (``modeling.model.LAYER_MODULES``)
to the graph value that holds it; a parity tool adds those values as extra graph
outputs. ``initializers`` (optional) maps initializers to the canonical tensors of
``tensor_names`` they store, with the layout they are stored in; a packed initializer
lists its members and each one's slice of the output axis.

IOSpec: {"name", "dtype" (numpy name), "shape" (ints and axis names), "role",
"layer" (state only), "init" ("zeros", state only), "present" (the output that
feeds this input on the next call, state only)}. Roles: input_ids, attention_mask,
position_ids, key, value, conv, context, logits. Axis names: batch_size,
sequence_length, total_sequence_length, past_sequence_length,
present_sequence_length.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmexport.errors import ArtifactError
from lmexport.jsonio import read_json_object
from lmexport.safe_paths import check_folder_links
from lmexport.manifest_schema import DTYPES, MAX_DIM, MAX_LAYERS, ROLES, STATE_ROLES, manifest_problems  # noqa: F401

log = logging.getLogger(__name__)
MANIFEST_FILE = "lmexport.json"
FORMAT = "lmexport-onnx"
FORMAT_VERSION = 1


def variant_name(dtype: str, method: str | None) -> str:
    """An export's variant, also its default tolerance preset: the quantization method, else the dtype."""
    return method if method and method != "none" else dtype


@dataclass(frozen=True)
class IOSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]
    role: str
    layer: int | None = None
    init: str | None = None
    present: str | None = None

    @property
    def is_state(self) -> bool:
        return self.role in STATE_ROLES

    def concrete_shape(self, axes: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else axes[d] for d in self.shape)

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}


@dataclass
class Manifest:
    mode: str
    dtype: str
    quantization: dict[str, Any]
    opset: int
    source: dict[str, Any]
    num_layers: int
    inputs: list[IOSpec]
    outputs: list[IOSpec]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokenizer: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    model_file: str = "model.onnx"
    data_file: str = "model.onnx.data"
    probes: dict[str, str] = field(default_factory=dict)
    initializers: dict[str, dict[str, Any]] = field(default_factory=dict)
    fused_ops: bool = False
    pack_matmuls: bool = False          # absent from folders exported before packing: not packed
    tolerance_preset: str | None = None

    # ------------------------------------------------------------ queries
    def input(self, role: str) -> IOSpec | None:
        return next((s for s in self.inputs if s.role == role), None)

    def state_inputs(self) -> list[IOSpec]:
        return [s for s in self.inputs if s.is_state]

    def output(self, role: str) -> IOSpec | None:
        return next((s for s in self.outputs if s.role == role), None)

    @property
    def variant(self) -> str:
        return variant_name(self.dtype, self.quantization.get("method"))

    @property
    def preset(self) -> str:
        """The tolerance preset to compare this folder with: the one it was validated with."""
        return self.tolerance_preset or self.variant

    @property
    def weights_hash(self) -> str | None:
        return self.source.get("weights_hash")

    @property
    def config(self) -> dict:
        return self.source.get("config", {})

    # ------------------------------------------------------------ io
    def to_json(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model_file": self.model_file, "data_file": self.data_file,
            "mode": self.mode, "dtype": self.dtype, "quantization": self.quantization,
            "opset": self.opset, "fused_ops": self.fused_ops, "pack_matmuls": self.pack_matmuls,
            **({"tolerance_preset": self.tolerance_preset} if self.tolerance_preset else {}),
            "source": self.source, "num_layers": self.num_layers,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "files": self.files, "tokenizer": self.tokenizer, "versions": self.versions,
            "probes": self.probes, "initializers": self.initializers,
        }

    def write(self, folder: Path) -> None:
        (Path(folder) / MANIFEST_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, folder: str | Path) -> "Manifest":
        folder = Path(folder)
        path = folder / MANIFEST_FILE
        if not folder.is_dir():
            raise ArtifactError(f"{folder} is not an exported ONNX folder", hint="run lmexport onnx first")
        if not path.is_file():
            raise ArtifactError(f"{folder} has no {MANIFEST_FILE}",
                                hint="export the folder with lmexport onnx, or restore the file")
        check_folder_links(folder, ArtifactError)
        manifest = cls.from_json(read_json_object(path, ArtifactError), path)
        manifest._bound_context(folder)
        return manifest

    def _bound_context(self, folder: Path) -> None:
        """The context length everything reads (``config["max_position_embeddings"]``): where
        lmexport.json and the folder's own config.json disagree, the smaller one, with a warning,
        so an edited manifest cannot make generation run past what the model was built for."""
        config_path = folder / "config.json"
        if not config_path.is_file() or not self.config:
            return
        ours = self.config.get("max_position_embeddings")
        theirs = read_json_object(config_path, ArtifactError).get("max_position_embeddings")
        if not isinstance(theirs, int) or isinstance(theirs, bool) or theirs <= 0 or theirs == ours:
            return
        if isinstance(ours, int) and ours < theirs:
            return
        log.warning("%s says a context of %s tokens, but %s says %d: using %d", MANIFEST_FILE, ours, config_path,
                    theirs, theirs)
        self.source = {**self.source, "config": {**self.config, "max_position_embeddings": theirs}}

    @classmethod
    def from_json(cls, data: Any, where: Path | str = MANIFEST_FILE) -> "Manifest":
        if not isinstance(data, dict):
            raise ArtifactError(f"{where} must hold a JSON object")
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{where} is not a {FORMAT} v{FORMAT_VERSION} manifest",
                                hint="re-export with this version of lmexport")
        problems = manifest_problems(data)
        if problems:
            more = f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
            raise ArtifactError(f"{where} is invalid: " + "; ".join(problems[:8]) + more,
                                hint="re-export the folder with lmexport onnx")
        specs = {key: [IOSpec(name=item["name"], dtype=item["dtype"], shape=tuple(item["shape"]),
                              role=item["role"], layer=item.get("layer"), init=item.get("init"),
                              present=item.get("present")) for item in data[key]]
                 for key in ("inputs", "outputs")}
        return cls(mode=data["mode"], dtype=data.get("dtype", "fp32"),
                   quantization=dict(data.get("quantization") or {"method": "none"}),
                   opset=data.get("opset", 0), fused_ops=data.get("fused_ops", False),
                   pack_matmuls=data.get("pack_matmuls", False),
                   tolerance_preset=data.get("tolerance_preset"),
                   source=dict(data.get("source") or {}),
                   num_layers=data["num_layers"], inputs=specs["inputs"], outputs=specs["outputs"],
                   files=dict(data.get("files") or {}), tokenizer=dict(data.get("tokenizer") or {}),
                   versions=dict(data.get("versions") or {}),
                   model_file=data.get("model_file", "model.onnx"),
                   data_file=data.get("data_file", "model.onnx.data"),
                   probes=dict(data.get("probes") or {}),
                   initializers=dict(data.get("initializers") or {}))


def stored_tensors(initializers: dict[str, dict]) -> set[str]:
    """The canonical tensors an ``initializers`` map (lmexport.json) stores, alone or in a pack."""
    return {info["tensor"] for info in initializers.values() if "tensor" in info} | {
        m["tensor"] for info in initializers.values() for m in info.get("members", ())}


def locate_tensor(initializers: dict[str, dict], tensor: str) -> tuple[str, dict, tuple[int, int] | None] | None:
    """Where a canonical tensor is stored: (initializer name, its entry, None) when alone,
    (packed initializer name, its entry, (first, end) of the member's output slice) when
    packed; None when no initializer holds it. A quantized tensor has several initializers
    (blocks, scales): the first listed is returned."""
    for name, info in initializers.items():
        if info.get("tensor") == tensor:
            return name, info, None
        for member in info.get("members", ()):
            if member["tensor"] == tensor:
                return name, info, tuple(member["out"])
    return None


def file_digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def check_files(folder: Path, manifest: Manifest, *, hashes: bool = False) -> list[str]:
    """Tell "this folder cannot be run" (an ArtifactError, exit 2) from "this graph differs
    from the export" (returned: the names of the files that changed, for a warning).

    A graph re-saved by ``onnx``, optimised by onnxruntime's transformer optimizer or
    onnxslim, or quantised by the user has a model file of another size or hash and often
    a data file of another size or name; that is a change, and whether the changed graph
    still loads and keeps the IO contract is for ONNX Runtime and ``check_io_contract`` to
    say. While the model file is the exported one, though, its data file must be exactly
    the exported one too (the graph reads it at fixed offsets): a data file of another
    size is damaged, as is any missing file the folder still needs.
    """
    problems, changed = [], []
    graph = folder / manifest.model_file
    graph_info = manifest.files.get(manifest.model_file)
    graph_changed = graph_info is not None and graph.is_file() and (
        graph.stat().st_size != graph_info.get("bytes")
        or ("sha256" in graph_info and file_digest(graph)["sha256"] != graph_info["sha256"]))
    for name, info in manifest.files.items():
        path = folder / name
        if not path.is_file():
            if name == manifest.data_file and graph_changed:
                changed.append(name)          # a re-saved graph may keep its weights under another name
            else:
                problems.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if name == manifest.model_file:
            if graph_changed:
                changed.append(name)
        elif size != info.get("bytes"):
            if name == manifest.data_file and not graph_changed:
                problems.append(f"{name} has {size} bytes, {MANIFEST_FILE} says {info.get('bytes')}")
            else:
                changed.append(name)
        elif hashes and "sha256" in info and file_digest(path)["sha256"] != info["sha256"]:
            changed.append(name)
    if not graph.is_file() and manifest.model_file not in manifest.files:
        problems.append(f"{manifest.model_file} is missing")
    if problems:
        raise ArtifactError(f"{folder} is damaged: " + "; ".join(problems),
                            hint="re-export the folder with lmexport onnx")
    return changed


ORT_TYPES = {"int64": "tensor(int64)", "float32": "tensor(float)", "float16": "tensor(float16)"}


def _shape_differs(graph: list, declared: tuple) -> bool:
    """A dimension the graph fixes (an int) that the manifest declares otherwise (another int, or a
    named axis the runtime would fill with another size). Named graph dimensions accept anything."""
    return any(isinstance(g, int) and g >= 0 and d != g for g, d in zip(graph, declared))


def _show(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def io_contract_problems(manifest: Manifest, graph_inputs: list, graph_outputs: list) -> list[str]:
    """What the graph (ONNX Runtime NodeArg lists: name, type, shape) lacks of the manifest's IO."""
    problems = []
    for kind, specs, args in (("input", manifest.inputs, graph_inputs), ("output", manifest.outputs, graph_outputs)):
        have = {a.name: a for a in args}
        for spec in specs:
            arg = have.get(spec.name)
            if arg is None:
                problems.append(f"{kind} {spec.name} is gone")
            elif arg.type != ORT_TYPES[spec.dtype]:
                problems.append(f"{kind} {spec.name} is {arg.type}, {MANIFEST_FILE} says {ORT_TYPES[spec.dtype]}")
            elif arg.shape is not None and len(arg.shape) != len(spec.shape):
                problems.append(f"{kind} {spec.name} has {len(arg.shape)} dimensions, {MANIFEST_FILE} says "
                                f"{len(spec.shape)}")
            elif arg.shape is not None and _shape_differs(arg.shape, spec.shape):
                problems.append(f"{kind} {spec.name} has shape {_show(arg.shape)}, {MANIFEST_FILE} says "
                                f"{_show(spec.shape)}")
    known = {s.name for s in manifest.inputs}
    problems += [f"input {a.name} is not in {MANIFEST_FILE} (nothing would feed it)"
                 for a in graph_inputs if a.name not in known]
    return problems
