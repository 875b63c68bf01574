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
      "tolerance_preset": "int4", # the preset the export was validated with (lmexport.parity.tolerances)
      "source": {"weights_hash": "sha256:...", "config": {...config.json...}},
      "num_layers": N,
      "inputs":  [IOSpec...],   # graph inputs, in graph order
      "outputs": [IOSpec...],   # graph outputs, in graph order
      "files": {"model.onnx": {"bytes": n, "sha256": "..."}, ...},
      "tokenizer": {"bos_token_id": 1, "eos_token_ids": [2], "pad_token_id": 0},
      "versions": {"lmexport": ..., "torch": ..., "onnx": ..., "onnxruntime": ...},
      "probes": {"layers.0.norm_in": "/model/layers.0/norm_in/output", ...},
      "initializers": {"<ONNX initializer name>": {"tensor": "<canonical name>", "layout": "..."}}
    }

``probes`` (optional) maps each layer module output (``modeling.model.LAYER_MODULES``)
to the graph value that holds it; a parity tool adds those values as extra graph
outputs. ``initializers`` (optional) maps initializers to the canonical tensors of
``tensor_names`` they store, with the layout they are stored in.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmexport.errors import ArtifactError
from lmexport.jsonio import read_json_object

MANIFEST_FILE = "lmexport.json"
FORMAT = "lmexport-onnx"
FORMAT_VERSION = 1
STATE_ROLES = ("key", "value", "conv", "context")
ROLES = ("input_ids", "attention_mask", "position_ids", "logits") + STATE_ROLES
DTYPES = ("int64", "float32", "float16")
# Sanity bounds: a manifest outside them is rejected before anything is allocated.
MAX_LAYERS = 1024
MAX_DIM = 1 << 20


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
            "opset": self.opset, "fused_ops": self.fused_ops,
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
        return cls.from_json(read_json_object(path, ArtifactError), path)

    @classmethod
    def from_json(cls, data: Any, where: Path | str = MANIFEST_FILE) -> "Manifest":
        problems: list[str] = []
        if not isinstance(data, dict):
            raise ArtifactError(f"{where} must hold a JSON object")
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{where} is not a {FORMAT} v{FORMAT_VERSION} manifest",
                                hint="re-export with this version of lmexport")
        n = data.get("num_layers")
        if not isinstance(n, int) or not 0 < n <= MAX_LAYERS:
            problems.append(f"num_layers {n!r} out of range 1..{MAX_LAYERS}")
        if data.get("mode") not in ("streaming", "legacy"):
            problems.append(f"mode {data.get('mode')!r} unknown")
        specs: dict[str, list[IOSpec]] = {"inputs": [], "outputs": []}
        for key in specs:
            items = data.get(key)
            if not isinstance(items, list) or not items:
                problems.append(f"{key} missing")
                continue
            for item in items:
                try:
                    spec = IOSpec(name=str(item["name"]), dtype=item["dtype"], shape=tuple(item["shape"]),
                                  role=item["role"], layer=item.get("layer"), init=item.get("init"),
                                  present=item.get("present"))
                except (KeyError, TypeError) as exc:
                    problems.append(f"{key} entry {item!r} malformed ({exc})")
                    continue
                if spec.dtype not in DTYPES:
                    problems.append(f"{spec.name}: dtype {spec.dtype!r} unknown")
                if spec.role not in ROLES:
                    problems.append(f"{spec.name}: role {spec.role!r} unknown")
                for d in spec.shape:
                    if isinstance(d, bool) or not (isinstance(d, str) or (isinstance(d, int) and 0 <= d <= MAX_DIM)):
                        problems.append(f"{spec.name}: dimension {d!r} out of range")
                if spec.is_state and key == "inputs" and (spec.init != "zeros" or not spec.present):
                    problems.append(f"{spec.name}: state input needs init=zeros and a present output")
                specs[key].append(spec)
        out_names = {s.name for s in specs["outputs"]}
        for s in specs["inputs"]:
            if s.is_state and s.present and s.present not in out_names:
                problems.append(f"{s.name}: its present output {s.present} is not an output")
        if problems:
            raise ArtifactError(f"{where} is invalid: " + "; ".join(problems[:6]),
                                hint="re-export the folder with lmexport onnx")
        return cls(mode=data["mode"], dtype=str(data.get("dtype", "fp32")),
                   quantization=dict(data.get("quantization") or {"method": "none"}),
                   opset=int(data.get("opset", 0)), fused_ops=bool(data.get("fused_ops", False)),
                   tolerance_preset=data.get("tolerance_preset") if isinstance(data.get("tolerance_preset"), str)
                   else None,
                   source=dict(data.get("source") or {}),
                   num_layers=n, inputs=specs["inputs"], outputs=specs["outputs"],
                   files=dict(data.get("files") or {}), tokenizer=dict(data.get("tokenizer") or {}),
                   versions=dict(data.get("versions") or {}),
                   model_file=str(data.get("model_file", "model.onnx")),
                   data_file=str(data.get("data_file", "model.onnx.data")),
                   probes=dict(data.get("probes") or {}),
                   initializers=dict(data.get("initializers") or {}))


def file_digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def check_files(folder: Path, manifest: Manifest, *, hashes: bool = False) -> None:
    """Every file the manifest lists is present with its size (and hash, if asked)."""
    problems = []
    for name, info in manifest.files.items():
        path = folder / name
        if "/" in name or name.startswith("."):
            problems.append(f"file name {name!r} is not allowed")
        elif not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != info.get("bytes"):
            problems.append(f"{name} has {path.stat().st_size} bytes, {MANIFEST_FILE} says {info.get('bytes')}")
        elif hashes and file_digest(path)["sha256"] != info.get("sha256"):
            problems.append(f"{name} does not match its sha256 in {MANIFEST_FILE}")
    if problems:
        raise ArtifactError(f"{folder} is damaged: " + "; ".join(problems),
                            hint="re-export the folder with lmexport onnx")
