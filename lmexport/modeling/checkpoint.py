"""Reading and writing Hugging Face-style Liquid-Metal checkpoint folders.

A folder holds config.json, safetensors weights (one file, or shards listed in
model.safetensors.index.json) and tokenizer files. Names are mapped through
``tensor_names`` (canonical names and aliases); every problem found (missing,
extra, unmapped, duplicated or mis-shaped tensors, unreadable files) is collected
and raised as one CheckpointError. Pickle files are refused unless the caller
opts in, and then read with ``weights_only=True``. Nothing in the folder is run.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lmexport.atomic import atomic_output
from lmexport.errors import CheckpointError, UnsafeFileError
from lmexport.config import LiquidMetalConfig
from lmexport.modeling.model import LiquidMetalForCausalLM
from lmexport.modeling.folder_files import copy_verified
from lmexport.modeling.precheck import INDEX_FILE, check_model_folder, read_config_dict, shard_names  # noqa: F401
from lmexport.tensor_names import LM_HEAD, SE_FC1, TOKEN_CONV, expected_tensors, lookup

log = logging.getLogger(__name__)

PICKLE_FILES = ("pytorch_model.bin", "model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")
# Files copied with a model: tokenizer and generation settings, never code.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "added_tokens.json", "generation_config.json", "chat_template.jinja")


# The weight types a checkpoint may store; an integer or bool weight is refused, never converted.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SAFETENSORS_DTYPES = {torch.int8: "I8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64",
                      torch.uint8: "U8", torch.bool: "BOOL", torch.float64: "F64"}
for _name in ("uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2"):
    if hasattr(torch, _name):
        SAFETENSORS_DTYPES[getattr(torch, _name)] = {"uint16": "U16", "uint32": "U32", "uint64": "U64",
                                                     "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}[_name]


@dataclass
class Checkpoint:
    path: Path
    config: LiquidMetalConfig
    raw_config: dict
    tensors: dict[str, torch.Tensor] = field(repr=False)   # canonical name -> tensor

    def weights_hash(self) -> str:
        return weights_hash(self.tensors)

    def tokenizer_files(self) -> list[Path]:
        return [self.path / n for n in TOKENIZER_FILES if (self.path / n).is_file()]


def weights_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes in sorted name order (sharding-independent)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def _weight_files(folder: Path, allow_pickle: bool) -> tuple[list[Path], list[str]]:
    """The safetensors files to read, and problems (missing shards) found on the way."""
    index = folder / INDEX_FILE
    if index.is_file():
        names = shard_names(folder)
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{index.name} names shard(s) that are not in {folder}",
                                  [f"missing {n}" for n in missing],
                                  hint="the download may be incomplete; fetch the missing shards")
        return [folder / n for n in names], []
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files, []
    pickles = [folder / n for n in PICKLE_FILES if (folder / n).is_file()]
    if pickles and not allow_pickle:
        raise UnsafeFileError(f"{folder} has only pickle weights ({pickles[0].name}); lmexport does not "
                              f"unpickle files by default",
                              hint="convert them to safetensors, or pass --allow-pickle if you trust the file")
    if pickles:
        return pickles, []
    raise CheckpointError(f"no weights found in {folder}",
                          hint="expected model.safetensors or a sharded model.safetensors.index.json")


def _read_file(path: Path, problems: list[str]) -> dict[str, torch.Tensor]:
    if path.suffix in (".bin", ".pt", ".pth"):
        log.warning("reading pickle file %s with torch.load(weights_only=True)", path)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad pickle
            problems.append(f"{path.name} could not be read safely ({type(exc).__name__})")
            return {}
        if not isinstance(data, dict):
            problems.append(f"{path.name} does not hold a dict of tensors")
            return {}
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    try:
        out = {}
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                out[name] = f.get_tensor(name)
        return out
    except Exception as exc:  # safetensors raises SafetensorError/OSError for damaged files
        problems.append(f"{path.name} is not a readable safetensors file ({str(exc).splitlines()[0][:120]})")
        return {}


def read_raw_tensors(folder: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor in the folder's weight files, by its stored name (no mapping)."""
    files, problems = _weight_files(folder, allow_pickle)
    tensors: dict[str, torch.Tensor] = {}
    seen_in: dict[str, str] = {}
    for path in files:
        for name, t in _read_file(path, problems).items():
            if name in tensors:
                problems.append(f"{name} is stored twice ({seen_in[name]} and {path.name})")
                continue
            if t.dtype not in WEIGHT_DTYPES:       # an I32 weight read "as float" is values near 1e9
                problems.append(f"{name} is stored as {SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype))}, "
                                f"not a floating-point type (F32, F16, BF16)")
            tensors[name] = t
            seen_in[name] = path.name
    if problems:
        raise CheckpointError(f"cannot read the weights in {folder}", problems)
    return tensors


def _infer_config_keys(raw: dict, tensors: dict[str, torch.Tensor]) -> dict:
    """Fill token_mixing_kernel_size and se_reduction from tensor shapes where config lacks them."""
    raw = dict(raw)
    if "token_mixing_kernel_size" not in raw:
        conv = tensors.get(TOKEN_CONV.name.format(bid=0))
        if conv is not None:
            raw["token_mixing_kernel_size"] = int(conv.shape[-1])
            log.info("token_mixing_kernel_size=%d read from the conv weight shape", conv.shape[-1])
    if "se_reduction" not in raw:
        fc1 = tensors.get(SE_FC1.name.format(bid=0))
        if fc1 is not None and fc1.shape[0] > 0:
            raw["se_reduction"] = int(raw["hidden_size"]) // int(fc1.shape[0])
            log.info("se_reduction=%d read from the SE fc1 shape", raw["se_reduction"])
    return raw




def read_checkpoint(path: str | Path, *, allow_pickle: bool = False, llama_only: bool = False) -> Checkpoint:
    """Read and strictly check a checkpoint folder. ``llama_only``: expect a plain Llama."""
    folder = check_model_folder(path)
    raw = read_config_dict(folder)
    LiquidMetalConfig.from_dict(raw)  # fail on bad config before reading gigabytes
    stored = read_raw_tensors(folder, allow_pickle)

    problems: list[str] = []
    tensors: dict[str, torch.Tensor] = {}
    for name, t in stored.items():
        ref = lookup(name)
        if ref is None:
            problems.append(f"unmapped tensor {name}")
            continue
        if ref.name in tensors:
            problems.append(f"{name} and another name both map to {ref.name}")
            continue
        tensors[ref.name] = t
    config = LiquidMetalConfig.from_dict(_infer_config_keys(raw, tensors))

    expected = {r.name: r for r in expected_tensors(config, llama_only=llama_only)}
    if (not llama_only and config.model_type == "llama"
            and not any(not r.entry.llama for r in expected.values() if r.name in tensors)):
        raise CheckpointError(f"{folder} is a plain Llama checkpoint, without the Liquid-Metal modules",
                              hint=f"convert it first: lmexport convert {folder} -o OUT_DIR")
    if config.tie_word_embeddings and LM_HEAD.name in tensors:
        log.info("tie_word_embeddings is set: ignoring the stored %s", LM_HEAD.name)
        tensors.pop(LM_HEAD.name)
    for name in sorted(set(expected) - set(tensors)):
        problems.append(f"missing tensor {name}")
    for name in sorted(set(tensors) - set(expected)):
        problems.append(f"extra tensor {name}")
    for name, ref in expected.items():
        if name in tensors:
            want = ref.shape(config)
            if tuple(tensors[name].shape) != want:
                problems.append(f"{name} has shape {tuple(tensors[name].shape)}, config says {want}")
    if problems:
        raise CheckpointError(f"checkpoint {folder} does not match its config", problems)
    return Checkpoint(folder, config, raw, tensors)


def build_model(config: LiquidMetalConfig, tensors: dict[str, torch.Tensor],
                dtype: torch.dtype = torch.float32) -> LiquidMetalForCausalLM:
    """A model in eval mode holding exactly ``tensors`` (canonical names)."""
    with torch.device("meta"):
        model = LiquidMetalForCausalLM(config)
    state = {k: v.to(dtype) for k, v in tensors.items()}
    if config.tie_word_embeddings:
        state.pop(LM_HEAD.name, None)
    model.load_state_dict(state, strict=not config.tie_word_embeddings, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise CheckpointError("tensors left unset after loading", leftover)
    return model.eval()


def load_model(path: str | Path, *, dtype: torch.dtype = torch.float32,
               allow_pickle: bool = False) -> tuple[LiquidMetalForCausalLM, Checkpoint]:
    ckpt = read_checkpoint(path, allow_pickle=allow_pickle)
    return build_model(ckpt.config, ckpt.tensors, dtype), ckpt


def model_tensors(model: LiquidMetalForCausalLM) -> dict[str, torch.Tensor]:
    """The canonical tensors of a model (tied head: no lm_head.weight)."""
    names = {r.name for r in expected_tensors(model.config)}
    return {n: t.detach().contiguous() for n, t in model.state_dict().items() if n in names}


def save_checkpoint(model: LiquidMetalForCausalLM, out_dir: str | Path, *, tokenizer_from: Path | None = None,
                    overwrite: bool = False, max_shard_bytes: int | None = None,
                    extra_files: dict[str, str] | None = None) -> Path:
    """Write config.json, safetensors (sharded above ``max_shard_bytes``) and tokenizer files, atomically."""
    tensors = model_tensors(model)
    needed = sum(t.numel() * t.element_size() for t in tensors.values())
    inputs = [tokenizer_from] if tokenizer_from is not None else []
    with atomic_output(out_dir, overwrite=overwrite, directory=True, needed_bytes=needed, inputs=inputs) as tmp:
        (tmp / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
        _write_safetensors(tensors, tmp, max_shard_bytes)
        if tokenizer_from is not None:
            for name in TOKENIZER_FILES:
                if (tokenizer_from / name).is_file():
                    copy_verified(tokenizer_from / name, tmp / name)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(out_dir)


def _write_safetensors(tensors: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int | None) -> None:
    metadata = {"format": "pt"}
    if not max_shard_bytes:
        save_file(tensors, str(folder / "model.safetensors"), metadata=metadata)
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata=metadata)
        weight_map.update({n: fname for n in shard})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
