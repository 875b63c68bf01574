"""``lmexport gguf``: a checkpoint folder in, a validated GGUF file (or split shards) out.

The file is written with ``gguf.GGUFWriter`` in its two-phase form: every tensor's
name, shape and type is declared first (``add_tensor_info``; this also decides the
shards), then the header, metadata and tensor table are written and the tensors
follow one at a time (``write_tensor_data``): each is converted to float32, put in
GGUF layout (``tensor_names.to_gguf_layout``), quantised with ``gguf.quants`` and
written before the next is touched, so memory holds the checkpoint plus one tensor.

Everything is written into a staging folder beside the output, validated there
(``gguf_validate``), and only then renamed into place through
``atomic.atomic_output``: every shard appears, or none.

Names, keys and type rules: ``tensor_names`` and ``gguf_format``; docs/gguf.md.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from tqdm import tqdm

from lmexport import __version__
from lmexport.formats import gguf as fmt
from lmexport.atomic import atomic_outputs, check_output_path, staging_folder
from lmexport.modeling.checkpoint import Checkpoint, check_model_folder, read_checkpoint, read_config_dict
from lmexport.errors import CheckpointError, InputError
from lmexport.config import MODEL_TYPE, LiquidMetalConfig
from lmexport.tensor_names import TensorRef, expected_tensors, gguf_layout_shape, lookup, to_gguf_layout
from lmexport.exporters.gguf.tokenizer import GGUFTokenizer, read_tokenizer
from lmexport.exporters.gguf.kquant import check_kquant_options, requantize_staged
from lmexport.exporters.gguf.validate import ValidationReport, validate_gguf

log = logging.getLogger(__name__)
METADATA_RESERVE = 1 << 20      # bytes added to the tensor sizes for the disk-space check, plus tokens
ARCH_CHOICES = ("auto", fmt.ARCH_LLAMA)


@dataclass(frozen=True)
class GGUFOptions:
    outtype: str = "f16"             # a key of gguf_format.OUTTYPES
    arch: str = "auto"               # "auto" (liquidmetal for Liquid-Metal checkpoints) or "llama"
    split_max_size: int = 0          # bytes per shard; 0 writes one file
    name: str | None = None          # general.name; default: the model folder's name
    allow_pickle: bool = False
    tokenizer_pre: str | None = None # tokenizer.ggml.pre for a byte-level BPE lmexport cannot identify

    def __post_init__(self) -> None:
        if self.outtype not in fmt.OUTTYPES and self.outtype not in fmt.KQUANTS:
            raise InputError(f"unknown GGUF outtype {self.outtype!r}",
                             hint="choose one of " + ", ".join([*fmt.OUTTYPES, *fmt.KQUANTS]))
        if self.arch not in ARCH_CHOICES:
            raise InputError(f"unknown GGUF arch {self.arch!r}", hint="choose auto or llama")
        if self.split_max_size < 0:
            raise InputError("--split-max-size must be positive")


@dataclass(frozen=True)
class TensorPlan:
    ref: TensorRef
    shape: tuple[int, ...]          # numpy shape in GGUF layout
    qtype: QT
    fallback: bool                  # the outtype did not fit; F16 instead

    @property
    def nbytes(self) -> int:
        return fmt.tensor_nbytes(self.shape, self.qtype)


@dataclass
class GGUFReport:
    paths: list[Path]
    arch: str
    outtype: str
    plan: list[TensorPlan] = field(repr=False)
    validation: ValidationReport = field(repr=False)

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)

    @property
    def fallbacks(self) -> list[str]:
        return [p.ref.gguf_name for p in self.plan if p.fallback]


def parse_size(text: str | int | None) -> int:
    """'500M', '2G', '1.5GB', '300K' or a byte count -> bytes (decimal units, as llama.cpp's gguf-split)."""
    if text is None or text == "":
        return 0
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(text).upper())
    if not m:
        raise InputError(f"cannot read the size {text!r}", hint="write it like 500M, 2G or 1048576")
    size = int(float(m.group(1)) * 1000 ** " KMGT".index(m.group(2) or " "))
    if size <= 0:
        raise InputError(f"size {text!r} must be positive")
    return size


def resolve_arch(folder: Path, requested: str) -> str:
    """"liquidmetal" or "llama": auto picks llama for a checkpoint without the new module tensors
    (a plain Llama, or a Liquid-Metal config whose modules are absent), liquidmetal otherwise."""
    names = _stored_names(folder)
    new_modules = [n for n in names or () if (r := lookup(n)) is not None and not r.entry.llama]
    if requested == fmt.ARCH_LLAMA:
        if new_modules:
            raise InputError(f"--arch llama writes a plain llama GGUF, but {folder} holds the Liquid-Metal "
                             f"modules ({len(new_modules)} tensors, e.g. {new_modules[0]})",
                             hint="leave --arch at auto to write a liquidmetal GGUF")
        return fmt.ARCH_LLAMA
    if names is not None and not new_modules:
        log.info("%s holds no Liquid-Metal module tensors: writing a llama GGUF", folder)
        return fmt.ARCH_LLAMA
    if names is None and read_config_dict(folder).get("model_type", MODEL_TYPE) == "llama":
        return fmt.ARCH_LLAMA       # pickle weights: names unknown until read; go by config.json
    return fmt.ARCH_LIQUIDMETAL


def _stored_names(folder: Path) -> list[str] | None:
    """Tensor names from the safetensors headers (no tensor is read); None for other formats."""
    from safetensors import SafetensorError, safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    names = []
    for path in files:
        try:
            with safe_open(str(path), framework="np") as f:
                names.extend(f.keys())
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    return names


def plan_tensors(config: LiquidMetalConfig, arch: str, outtype: str) -> list[TensorPlan]:
    """Name, GGUF shape and type of every tensor, in file order; one error lists every misfit."""
    out = fmt.OUTTYPES[outtype]
    plans, misfits = [], []
    for ref in expected_tensors(config, llama_only=arch == fmt.ARCH_LLAMA):
        shape = gguf_layout_shape(ref, config)
        qtype = fmt.choose_type(shape, ref.entry.role, out)
        if qtype is None:
            misfits.append(f"{ref.gguf_name} {shape}")
            continue
        fallback = qtype != fmt.candidate_types(ref.entry.role, out)[0]
        if fallback:
            log.warning("%s: row length %d is not a multiple of the %s block size %d; writing it as %s",
                        ref.gguf_name, shape[-1], out.qtype.name, fmt.block_size(out.qtype), qtype.name)
        plans.append(TensorPlan(ref, shape, qtype, fallback))
    if misfits:
        raise InputError(f"no GGUF type fits {len(misfits)} tensor(s) for --outtype {outtype}: " + "; ".join(misfits),
                         hint="GGUF tensors need 1 to 4 non-empty dimensions")
    long_names = [p.ref.gguf_name for p in plans if len(p.ref.gguf_name.encode()) > fmt.MAX_NAME_BYTES]
    if long_names:
        raise InputError("GGUF tensor names longer than 63 bytes: " + ", ".join(long_names))
    return plans


def convert_tensor(plan: TensorPlan, tensor, config: LiquidMetalConfig) -> np.ndarray:
    """One checkpoint tensor -> the bytes (as a numpy array) GGUF stores for it."""
    array = tensor.detach().float().cpu().numpy()
    array = np.ascontiguousarray(to_gguf_layout(plan.ref, array, config), dtype=np.float32)
    data = gguf.quants.quantize(array, plan.qtype)
    return np.ascontiguousarray(data)


def write_metadata(writer: gguf.GGUFWriter, ckpt: Checkpoint, arch: str, outtype: str,
                   tokenizer: GGUFTokenizer, name: str, weights_hash: str) -> None:
    config = ckpt.config
    writer.add_name(name)
    writer.add_file_type(int(fmt.OUTTYPES[outtype].file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for ck in fmt.config_keys(arch):
        writer.add_key_value(ck.key(arch), getattr(config, ck.field), ck.vtype)
    writer.add_key_value(fmt.WEIGHTS_HASH, weights_hash, gguf.GGUFValueType.STRING)
    writer.add_key_value(fmt.SOURCE_CONFIG, json.dumps(config.to_dict(), sort_keys=True),
                         gguf.GGUFValueType.STRING)
    writer.add_key_value(fmt.LMEXPORT_VERSION, __version__, gguf.GGUFValueType.STRING)
    writer.add_key_value(fmt.OUTTYPE, outtype, gguf.GGUFValueType.STRING)
    tokenizer.write(writer)


def export_gguf(model_dir: str | Path, output: str | Path, options: GGUFOptions = GGUFOptions(), *,
                overwrite: bool = False) -> GGUFReport:
    """Write ``model_dir`` to ``output`` as GGUF, validate it, and return what was written."""
    folder = check_model_folder(model_dir)
    target = Path(output).absolute()
    check_output_path(target, overwrite, directory=False, inputs=[folder])   # fail before reading gigabytes
    arch = resolve_arch(folder, options.arch)
    ckpt = read_checkpoint(folder, allow_pickle=options.allow_pickle, llama_only=arch == fmt.ARCH_LLAMA)
    config = ckpt.config
    tokenizer = read_tokenizer(folder, config.vocab_size, pre=options.tokenizer_pre)
    check_kquant_options(options.outtype, options.split_max_size)
    kquant = options.outtype in fmt.KQUANTS
    if kquant:                       # before reading the weights: the patched llama.cpp must be here
        from lmexport.runtime.llamacpp.install import require_patched
        require_patched()
    written = fmt.KQUANT_SOURCE if kquant else options.outtype    # what lmexport itself writes
    plan = plan_tensors(config, arch, written)

    weights_hash = ckpt.weights_hash()
    writer = gguf.GGUFWriter(None, arch, split_max_size=options.split_max_size)
    write_metadata(writer, ckpt, arch, written, tokenizer, options.name or folder.name, weights_hash)
    for p in plan:
        writer.add_tensor_info(p.ref.gguf_name, p.shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.qtype)
    finals = writer.format_shard_names(target)
    needed = sum(p.nbytes for p in plan) + METADATA_RESERVE + sum(len(t) + 16 for t in tokenizer.tokens)
    if kquant:
        needed += needed // 2        # the f32 file and its quantized copy share the staging folder

    with atomic_outputs(finals, overwrite=overwrite, needed_bytes=needed, inputs=[folder]) as tmps, \
            staging_folder(target) as staging:
        _write_file(writer, staging / target.name, plan, ckpt)
        staged = writer.format_shard_names(staging / target.name)
        report = validate_gguf(staged, ckpt, arch=arch, outtype=written, weights_hash=weights_hash,
                               tokenizer=tokenizer)
        if kquant:                   # llama.cpp's quantizer, then the same validation with the mix's rules
            staged = [requantize_staged(staged[0], options.outtype)]
            report = validate_gguf(staged, ckpt, arch=arch, outtype=options.outtype, weights_hash=weights_hash,
                                   tokenizer=tokenizer)
        for src, tmp in zip(staged, tmps):
            src.replace(tmp)
    log.debug("wrote %s (%d file(s), %s, %s)", target, len(finals), arch, options.outtype)
    return GGUFReport(finals, arch, options.outtype, plan, report)


def _write_file(writer: gguf.GGUFWriter, path: Path, plan: list[TensorPlan], ckpt: Checkpoint) -> None:
    try:
        writer.open_output_file(path)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with tqdm(plan, desc="Writing GGUF", unit="tensor", disable=None, leave=False) as bar:
            for p in bar:
                writer.write_tensor_data(convert_tensor(p, ckpt.tensors[p.ref.name], ckpt.config))
    finally:
        writer.close()
