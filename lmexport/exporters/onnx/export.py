"""``lmexport onnx``: a Liquid-Metal checkpoint -> a stateful, validated ONNX folder.

Model in, folder out, options in ``OnnxExportOptions``. The graph IO (names, dtypes,
axes, state initialisation) is declared once, as IOSpecs, by ``graph_io``; the trace,
the manifest (lmexport.json) and the validator all read it from there.

The folder (written through ``atomic_output``, validated before it is renamed into
place; a failed validation leaves nothing at OUT_DIR)::

    model.onnx, model.onnx.data   one graph for prefill and decode, weights external
    config.json                   the source config (normalised, inferred keys filled in)
    tokenizer.json,               the checkpoint's tokenizer as transformers reads it, the BOS/EOS
    tokenizer_config.json         rule stated in both (lmexport.modeling.tokenizer), so the runtime
                                  encodes like AutoTokenizer.from_pretrained(checkpoint)
    other tokenizer files         as found next to the checkpoint (tokenizer.model, chat_template.jinja, ...)
    lmexport.json                 the manifest: IO, mode, dtype, quantization, probes, files
    genai_config.json             the same IO for onnxruntime-genai (genai.py)
    liquid_metal.mjs              --target transformers.js: its loader (transformersjs.py)

See docs/onnx.md for the graph IO, the precision variants and their tolerances.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmexport.atomic import atomic_output, check_output_path
from lmexport.errors import ExportError, InputError, ValidationError
from lmexport.manifest import IOSpec, Manifest, file_digest, stored_tensors, variant_name
from lmexport.config import LiquidMetalConfig
from lmexport.modeling.folder_files import verify_files
from lmexport.modeling.modules import CONTEXT_SLOTS
from lmexport.modeling.tokenizer import ResolvedTokenizer, ship_tokenizer_files
from lmexport.tensor_names import EMBEDDING, expected_tensors, lookup, lookup_pack

from lmexport.exporters.onnx import transformersjs
from lmexport.exporters.onnx.genai import write_genai_config

log = logging.getLogger(__name__)

FUSED_MIN_OPSET = 23                # the opset of Attention, RotaryEmbedding, RMSNormalization (onnx_fused)
SUPPORTED_OPSETS = range(18, 24)   # 17 and below: torch's version converter fails on this graph
DEFAULT_OPSET = 23
DTYPES = {"fp32": (torch.float32, "float32"), "fp16": (torch.float16, "float16")}
QUANTIZATIONS = ("none", "int8", "int4")
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
# Graph names of each state kind, (past input, present output); {layer} is the layer index.
STATE_NAMES = {"key": ("past_key_values.{layer}.key", "present.{layer}.key"),
               "value": ("past_key_values.{layer}.value", "present.{layer}.value"),
               "conv": ("past_conv.{layer}", "present_conv.{layer}"),
               "context": ("past_context.{layer}", "present_context.{layer}")}
# The consumer a folder's state names follow: each target overrides some of STATE_NAMES.
TARGETS = {"lmexport": {}, transformersjs.TARGET: transformersjs.STATE_NAMES}


@dataclass(frozen=True)
class OnnxExportOptions:
    dtype: str = "fp32"                 # "fp32" | "fp16"
    quantize: str = "none"              # "none" | "int8" | "int4" (of the fp32 graph)
    opset: int = DEFAULT_OPSET
    fused_ops: bool = True              # opset-23 Attention/RotaryEmbedding/RMSNormalization (onnx_fused)
    block_size: int = 32                # int4/int8: weights per scale and zero point
    accuracy_level: int = 4             # MatMulNBits accuracy_level (4 = int8 compute on CPU)
    bits_per_weight: float | None = None  # int4: the budget for 8-bit upgrades (None: Q4_K_M's, bitplan.q4_k_m_bits)
    quantize_embeddings: bool = True    # the token embedding in GatherBlockQuantized (a tied head shares it)
    search: bool = True                 # searched scales/zero points (False: round-to-nearest, for comparison)
    int4_offsets: bool = True           # int4: a float offset per block (quant.offsets_of) instead of uint8 zero points
    scale_dtype: str = "fp16"           # int4/int8: block scales stored as fp16 (cast to fp32 in the graph) or fp32
    validate: bool = True
    decode_steps: int = 8               # validation: decode steps after the prefill
    tolerance: str | None = None        # validation: a preset other than the variant's own
    target: str = "lmexport"            # whose state-name conventions the graph IO follows (TARGETS)
    pack_matmuls: bool = True           # one MatMul per tensor_names.PACKS entry (q|k|v, gate|up): pack.py

    def __post_init__(self) -> None:
        problems = []
        if self.dtype not in DTYPES:
            problems.append(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.quantize not in QUANTIZATIONS:
            problems.append(f"quantize {self.quantize!r} is not one of {', '.join(QUANTIZATIONS)}")
        elif self.quantize != "none" and self.dtype != "fp32":
            problems.append(f"--quantize {self.quantize} quantizes the fp32 graph; use --dtype fp32")
        if self.opset not in SUPPORTED_OPSETS:
            problems.append(f"opset {self.opset} is not supported (supported: "
                            f"{SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1})")
        elif self.fused_ops and self.opset < FUSED_MIN_OPSET:
            problems.append(f"fused attention and norm ops need opset {FUSED_MIN_OPSET} "
                            f"(got {self.opset}); pass --no-fused-ops to export the plain graph at that opset")
        if self.block_size not in (16, 32, 64, 128, 256):
            problems.append(f"block size {self.block_size} is not one of 16, 32, 64, 128, 256")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            problems.append(f"accuracy level {self.accuracy_level} is not in 0..4")
        if self.bits_per_weight is not None and not 4 <= self.bits_per_weight <= 10:
            problems.append(f"bits per weight {self.bits_per_weight:g} is not in 4..10 (4: every weight at 4 bits)")
        if self.bits_per_weight is not None and self.quantize != "int4":
            problems.append("--bits-per-weight sets the int4 recipe's budget; use it with --quantize int4")
        if not self.int4_offsets and self.quantize != "int4":
            problems.append("--integer-zero-points chooses the int4 recipe's zero points; use it with --quantize int4")
        from lmexport.exporters.onnx.quant import SCALE_DTYPES
        if self.scale_dtype not in SCALE_DTYPES:
            problems.append(f"scale dtype {self.scale_dtype!r} is not one of {', '.join(SCALE_DTYPES)}")
        if self.tolerance is not None:
            from lmexport.compare.tolerances import TOLERANCES
            if self.tolerance not in TOLERANCES:
                problems.append(f"tolerance preset {self.tolerance!r} is unknown")
        if self.decode_steps < 1:
            problems.append("validation needs at least one decode step")
        if self.target not in TARGETS:
            problems.append(f"target {self.target!r} is not one of {', '.join(TARGETS)}")
        if problems:
            raise InputError("; ".join(problems))

    @property
    def variant(self) -> str:
        """The export's variant: its default tolerance preset (lmexport.compare.tolerances)."""
        return variant_name(self.dtype, self.quantize)

    @property
    def preset(self) -> str:
        return self.tolerance or self.variant

    def quantization(self) -> dict:
        if self.quantize in ("int4", "int8"):
            return {"method": self.quantize, "op": "MatMulNBits", "block_size": self.block_size,
                    "zero_points": "float offsets at 4 bits, uint8 otherwise" if self.quantize == "int4"
                    and self.int4_offsets else "uint8, packed",
                    "scales": "searched" if self.search else "round-to-nearest",
                    "scale_dtype": self.scale_dtype,
                    "accuracy_level": self.accuracy_level}
        return {"method": "none"}


# ---------------------------------------------------------------- graph IO, declared once

def graph_io(config: LiquidMetalConfig, dtype: str = "fp32",
             target: str = "lmexport") -> tuple[list[IOSpec], list[IOSpec]]:
    """Every graph input and output, in graph order. ``dtype`` is the float type of the
    keys, values and conv window; context sums and logits are always float32. State
    names are STATE_NAMES, with the ``target``'s overrides (TARGETS)."""
    f = DTYPES[dtype][1]
    c = config
    names = {**STATE_NAMES, **TARGETS[target]}

    def state(kind: str, layer: int, dtype_: str, past_shape, present_shape) -> tuple[IOSpec, IOSpec]:
        past, present = (n.format(layer=layer) for n in names[kind])
        return (IOSpec(past, dtype_, past_shape, kind, layer, "zeros", present),
                IOSpec(present, dtype_, present_shape, kind, layer))

    ins = [IOSpec("input_ids", "int64", ("batch_size", "sequence_length"), "input_ids"),
           IOSpec("attention_mask", "int64", ("batch_size", "total_sequence_length"), "attention_mask"),
           IOSpec("position_ids", "int64", ("batch_size", "sequence_length"), "position_ids")]
    outs = [IOSpec("logits", "float32", ("batch_size", "sequence_length", c.vocab_size), "logits")]
    kv_in = ("batch_size", c.num_key_value_heads, "past_sequence_length", c.head_dim)
    kv_out = ("batch_size", c.num_key_value_heads, "total_sequence_length", c.head_dim)
    pairs = [state(kind, i, f, kv_in, kv_out) for i in range(c.num_hidden_layers) for kind in ("key", "value")]
    if c.streaming:
        conv = ("batch_size", c.hidden_size, c.conv_state_width)
        ctx = ("batch_size", len(CONTEXT_SLOTS), c.hidden_size)
        pairs += [state("conv", i, f, conv, conv) for i in range(c.num_hidden_layers)]
        pairs += [state("context", i, "float32", ctx, ctx) for i in range(c.num_hidden_layers)]
    return ins + [p for p, _ in pairs], outs + [q for _, q in pairs]


# ---------------------------------------------------------------- initializer map

PACKED_LAYOUT = "transposed [in, out], the members side by side along out"


def initializer_map(initializers, config: LiquidMetalConfig) -> dict[str, dict]:
    """ONNX initializer name -> where it keeps canonical tensors, for every initializer
    (TensorProto, data not loaded) that stores (part of) one; anonymous constants are left out.

    One tensor: {"tensor": canonical name, "layout": ..., "file", "offset"/"length": its bytes
    in the data file}. A pack (tensor_names.PACKS): {"pack": its name, "members": [{"tensor":
    canonical name, "out": [first, end]}, ...] (each member's slice of the output axis),
    "layout", "file", "offset", "length"}."""
    from lmexport.exporters.onnx.quant import canonical_of

    out = {}
    for tensor in initializers:
        name = tensor.name
        found = canonical_of(name)
        if found is None:
            continue
        stored, layout = found
        pack = lookup_pack(stored)
        if pack is not None:
            info = {"pack": pack.name, "layout": layout or PACKED_LAYOUT,
                    "members": [{"tensor": ref.name, "out": [first, end]}
                                for ref, first, end in pack.columns(config)]}
        else:
            ref = lookup(stored)
            transposed = ref.entry.role == "matrix"          # every nn.Linear is stored [in, out]
            info = {"tensor": ref.name,
                    "layout": layout or ("transposed [in, out]" if transposed else "as stored")}
            if ref.entry.module == "lm_head" and config.tie_word_embeddings:
                info["tied_to"] = EMBEDDING.name
        where = {e.key: e.value for e in tensor.external_data}
        info.update(file=where.get("location"), offset=int(where.get("offset", 0)), length=int(where.get("length", 0)))
        out[name] = info
    return out


def _check_initializers(found: dict[str, dict], config: LiquidMetalConfig) -> None:
    have = stored_tensors(found)
    want = {r.name for r in expected_tensors(config)}
    missing = sorted(want - have)
    if missing:
        raise ExportError("the exported graph lost the names of some tensors: " + ", ".join(missing[:5]),
                          hint="the parity tool could not find them in model.onnx.data")


# ---------------------------------------------------------------- export

@dataclass
class OnnxExportResult:
    path: Path
    manifest: Manifest
    report: object | None = None        # onnx_validate.ValidationReport
    notes: list[str] = field(default_factory=list)


def estimate_bytes(model, options: OnnxExportOptions) -> int:
    """Bytes the export needs on disk at its peak (fp32 graph plus the quantized copy)."""
    params = sum(p.numel() for p in model.parameters())
    if model.config.tie_word_embeddings:
        params += model.lm_head.weight.numel()       # stored once for Gather, once transposed
    fp32 = params * 4
    final = {"none": fp32 // (2 if options.dtype == "fp16" else 1), "int8": fp32 // 3,
             "int4": fp32 // 3}[options.quantize]
    extra = fp32 if options.quantize != "none" else 0
    return int((final + extra) * 1.1) + (1 << 20)


def export_onnx(model_dir: str | Path, out_dir: str | Path, options: OnnxExportOptions = OnnxExportOptions(),
                *, overwrite: bool = False) -> OnnxExportResult:
    """Read the checkpoint, write the ONNX folder, validate it against PyTorch."""
    from lmexport.modeling.checkpoint import load_model

    out_dir = Path(out_dir)
    check_output_path(out_dir.absolute(), overwrite, directory=True, inputs=[model_dir])  # before reading gigabytes
    options = transformersjs.browser_safe(options)
    from lmexport.modeling.tokenizer import has_tokenizer, resolve_tokenizer

    model, ckpt = load_model(model_dir)
    verify_files(ckpt.tokenizer_files())                      # a link to a host file fails here, not after the trace
    tokenizer = resolve_tokenizer(ckpt.path) if has_tokenizer(ckpt.path) else None
    with atomic_output(out_dir, overwrite=overwrite, directory=True, inputs=[model_dir],
                       needed_bytes=estimate_bytes(model, options)) as tmp:
        manifest = write_folder(model, tmp, options, source_hash=ckpt.weights_hash(),
                                tokenizer_files=ckpt.tokenizer_files(), tokenizer=tokenizer)
        report = None
        if options.validate:
            from lmexport.exporters.onnx.validate import validate_folder
            report = validate_folder(tmp, model, options.preset, decode_steps=options.decode_steps)
            log.debug("%s", report.table())
            if report.failures:
                raise ValidationError(f"the ONNX export does not match PyTorch ({options.preset} tolerances); "
                                      f"nothing was written to {out_dir}", report.failures,
                                      hint="rerun with --debug, or --no-validate to keep the folder anyway")
    log.debug("wrote %s", out_dir)  # the command prints the result line
    return OnnxExportResult(out_dir, manifest, report)


def write_folder(model, folder: Path, options: OnnxExportOptions, *, source_hash: str,
                 tokenizer_files: list[Path] = (), tokenizer: ResolvedTokenizer | None = None) -> Manifest:
    """Write model.onnx(.data), config.json, tokenizer files and lmexport.json into ``folder``.

    ``tokenizer`` (resolved from the checkpoint) replaces its tokenizer.json and tokenizer_config.json.
    """
    import onnx

    from lmexport.exporters.onnx.graph import trace

    config = model.config
    inputs, outputs = graph_io(config, options.dtype, options.target)
    model_path = folder / MODEL_FILE
    chosen: dict = {}
    if options.quantize == "none":
        traced = trace(model, model_path, inputs, outputs, DTYPES[options.dtype][0], options.opset,
                       options.fused_ops, options.pack_matmuls)
    else:
        from lmexport.exporters.onnx.quant import quantize
        staging = folder / ".fp32"
        staging.mkdir()
        traced = trace(model, staging / MODEL_FILE, inputs, outputs, torch.float32, options.opset,
                       options.fused_ops, options.pack_matmuls)
        chosen = quantize(staging / MODEL_FILE, model_path, options, DATA_FILE, config, model)
        shutil.rmtree(staging)
    _check_data_files(folder)
    log.info("checking %s with onnx.checker", MODEL_FILE)
    onnx.checker.check_model(str(model_path))
    graph = onnx.load(str(model_path), load_external_data=False).graph
    if options.target == transformersjs.TARGET:
        transformersjs.check_browser_ops(graph)
    inits = initializer_map(graph.initializer, config)
    _check_initializers(inits, config)
    values = {o for n in graph.node for o in n.output}
    lost = [v for v in traced.probes.values() if v not in values]
    if lost:
        raise ExportError(f"probe values missing from the graph: {', '.join(lost[:4])}")

    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    ship_tokenizer_files(folder, tokenizer, list(tokenizer_files))
    if options.target == transformersjs.TARGET:
        transformersjs.write_shim(folder)
    manifest = Manifest(
        mode=config.context_mode, dtype=options.dtype, quantization={**options.quantization(), **chosen},
        opset=traced.opset, fused_ops=options.fused_ops, pack_matmuls=options.pack_matmuls,
        tolerance_preset=options.preset,
        source={"weights_hash": source_hash, "config": config.to_dict()},
        num_layers=config.num_hidden_layers, inputs=inputs, outputs=outputs,
        tokenizer={"bos_token_id": config.bos_token_id, "eos_token_ids": config.eos_token_ids,
                   "pad_token_id": config.pad_token_id,
                   **({"add_bos_token": tokenizer.add_bos, "add_eos_token": tokenizer.add_eos,
                       "resolved_by": tokenizer.resolved_by} if tokenizer is not None else {})},
        versions=_versions(), model_file=MODEL_FILE, data_file=DATA_FILE,
        probes=traced.probes, initializers=inits)
    write_genai_config(manifest, folder)      # every folder runs in onnxruntime-genai too
    manifest.files = {p.name: file_digest(p) for p in sorted(folder.iterdir()) if p.is_file()}
    manifest.write(folder)
    return manifest


def _check_data_files(folder: Path) -> None:
    extra = [p.name for p in folder.iterdir() if p.is_file() and p.name not in (MODEL_FILE, DATA_FILE)]
    if extra or not (folder / DATA_FILE).is_file():
        raise ExportError(f"expected exactly {MODEL_FILE} and {DATA_FILE}, found "
                          + ", ".join(sorted(p.name for p in folder.iterdir())))


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("lmexport", "torch", "onnx", "onnxruntime", "onnxscript"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out
