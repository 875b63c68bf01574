"""``model.lmexport.json``: the self-description of an ExecuTorch program, beside ``model.pte``.

Torch-free (the engine reads it before loading the program). Layout (format_version 1)::

    {
      "format": "lmexport-executorch", "format_version": 1,
      "program_file": "model.pte", "method": "forward",
      "backend": "XnnpackBackend", "dtype": "fp32", "variant": "fp32" | "8da4w",
      "quantization": {"method": "none" | "8da4w", ...},
      "tolerance_preset": "fp32" | "8da4w",
      "max_context": 2048,                      # KV cache length = the largest input_pos + T
      "inputs":  [{"name": "tokens", "dtype": "int64", "shape": [1, "sequence_length"]},
                  {"name": "input_pos", "dtype": "int64", "shape": [1]}],
      "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, "sequence_length", V]}],
      "state": [{"role": "key"|"value"|"conv"|"context", "layer": i, "buffer": "<program buffer>",
                 "shape": [...], "dtype": "float32", "init": "zeros" | "none"}, ...],
      "new_sequence": "input_pos = 0",          # how a caller starts over (program.py)
      "constant_methods": {"get_max_seq_len": ..., "get_bos_id": ..., ...},
      "source": {"weights_hash": "sha256:...", "config": {...}},
      "files": {"model.pte": {"bytes": n, "sha256": "..."}},
      "tokenizer": {"files": ["tokenizer.json", "tokenizer_config.json"], "add_bos": true,
                    "bos_token_id": 1, "eos_token_ids": [2], "pad_token_id": 0},
      "versions": {"lmexport": ..., "torch": ..., "executorch": ..., "torchao": ...}
    }
"""
from __future__ import annotations

from pathlib import Path

from lmexport.errors import ArtifactError
from lmexport.jsonio import read_json_object

FORMAT = "lmexport-executorch"
FORMAT_VERSION = 1
SUFFIX = ".lmexport.json"
# variant -> tolerance preset (lmexport.compare.tolerances)
PRESETS = {"fp32": "fp32", "8da4w": "8da4w"}


def sidecar_path(pte: str | Path) -> Path:
    """``model.pte`` -> ``model.lmexport.json`` beside it."""
    pte = Path(pte)
    return pte.with_name(pte.stem + SUFFIX)


def state_specs(config, max_context: int) -> list[dict]:
    from lmexport.exporters.executorch.program import INIT_PATTERNS, STATE_BUFFERS, state_shapes

    shapes = state_shapes(config, max_context)
    out = []
    for kind, template in STATE_BUFFERS.items():
        for i in range(config.num_hidden_layers):
            buffer = template.format(layer=i)
            init = "zeros" if any(p.rstrip("_") in buffer for p in INIT_PATTERNS) else "none"
            out.append({"role": kind, "layer": i, "buffer": buffer, "shape": shapes[kind],
                        "dtype": "float32", "init": init})
    return out


def build(config, options, max_context: int, *, program_file: str, program_bytes: Path, weights_hash: str,
          tokenizer, constant_methods: dict, tokenizer_files: list[str] = ()) -> dict:
    import importlib.metadata as md

    from lmexport.exporters.executorch.program import INPUTS, OUTPUTS
    from lmexport.manifest import file_digest

    def version(package: str) -> str | None:
        try:
            return md.version(package)
        except md.PackageNotFoundError:
            return None

    io = lambda specs: [{"name": n, "dtype": d, "shape": [config.vocab_size if x == "vocab_size" else x  # noqa: E731
                                                           for x in s]} for n, d, s in specs]
    tok = {"files": [], "bos_token_id": config.bos_token_id, "eos_token_ids": list(config.eos_token_ids),
           "pad_token_id": config.pad_token_id if config.pad_token_id is not None else 0}
    if tokenizer is not None:
        tok.update(files=list(tokenizer_files), add_bos=tokenizer.add_bos, add_eos=tokenizer.add_eos)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "program_file": program_file, "method": "forward", "backend": "XnnpackBackend",
        "dtype": "fp32", "variant": options.variant, "quantization": options.quantization(),
        "tolerance_preset": options.preset, "max_context": max_context,
        "inputs": io(INPUTS), "outputs": io(OUTPUTS),
        "state": state_specs(config, max_context),
        "new_sequence": "input_pos = 0",
        "constant_methods": constant_methods,
        "source": {"weights_hash": weights_hash, "config": config.to_dict()},
        "files": {program_file: file_digest(program_bytes)},
        "tokenizer": tok,
        "versions": {p: version(p) for p in ("lmexport", "torch", "executorch", "torchao")},
    }


def read(pte: str | Path) -> dict:
    """The sidecar of ``pte``; an ArtifactError (exit 2) when it is missing or not ours."""
    path = sidecar_path(pte)
    if not path.is_file():
        raise ArtifactError(f"{path.name} is missing beside {pte}",
                            hint="export with `lmexport executorch`, which writes it beside the .pte")
    meta = read_json_object(path)
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path} is not an lmexport ExecuTorch sidecar (format {meta.get('format')!r}, "
                            f"version {meta.get('format_version')!r})", hint="re-export the model")
    for key in ("max_context", "constant_methods", "source", "tokenizer"):
        if key not in meta:
            raise ArtifactError(f"{path} lacks {key!r}", hint="re-export the model")
    return meta
