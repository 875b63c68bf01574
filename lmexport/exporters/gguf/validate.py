"""Validation of a written GGUF file, always run before the file reaches its output path.

The file is re-opened with ``gguf.GGUFReader`` (through ``gguf_model.open_gguf``) and
checked against the checkpoint it came from:

* required metadata keys, each with its GGUF value type, and their values;
* the config rebuilt from the metadata equals the checkpoint's config;
* the exact tensor set computed from the config, shapes, and types by rule;
* tokenizer arrays as long as the vocabulary, special-token ids in range;
* tensor names under 64 bytes;
* every tensor dequantised, layout transforms undone, and compared with the source:
  ``max |w' - w| <= WEIGHT_BOUNDS[type] * max |w| + ABS_FLOOR``.

Every failure is collected and raised as one ``ValidationError``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from gguf import GGUFValueType as VT
from gguf import Keys, TokenType

from lmexport.formats import gguf as fmt
from lmexport.modeling.checkpoint import Checkpoint
from lmexport.errors import ArtifactError, ValidationError
from lmexport.exporters.gguf.reader import GGUFFile, open_gguf
from lmexport.tensor_names import gguf_layout_shape
from lmexport.exporters.gguf.tokenizer import GGUFTokenizer

log = logging.getLogger(__name__)
_TOKEN_TYPES = {int(t) for t in TokenType}


@dataclass(frozen=True)
class RoundTrip:
    gguf_name: str
    qtype: str
    max_abs: float           # max |dequantised - source|
    rel: float               # max_abs / max |source|
    bound: float             # allowed rel (WEIGHT_BOUNDS)


@dataclass
class ValidationReport:
    round_trip: list[RoundTrip] = field(default_factory=list)

    def worst_by_type(self) -> dict[str, float]:
        """Largest relative round-trip error per GGUF type."""
        out: dict[str, float] = {}
        for r in self.round_trip:
            out[r.qtype] = max(out.get(r.qtype, 0.0), r.rel)
        return out


def _close(a, b) -> bool:
    if isinstance(b, float) or isinstance(a, float):
        return np.float32(a) == np.float32(b)
    return a == b


def _check_type(g: GGUFFile, key: str, vtype: VT, failures: list[str], required: bool = True) -> bool:
    types = g.types(key)
    if types is None:
        if required:
            failures.append(f"missing key {key}")
        return False
    if types[0] != vtype:
        failures.append(f"{key} has type {types[0].name}, expected {vtype.name}")
        return False
    if vtype == VT.ARRAY and key in fmt.TOKENIZER_ARRAY_TYPES and types[-1] != fmt.TOKENIZER_ARRAY_TYPES[key]:
        failures.append(f"{key} holds {types[-1].name}, expected {fmt.TOKENIZER_ARRAY_TYPES[key].name}")
        return False
    return True


def _check_metadata(g: GGUFFile, ckpt: Checkpoint, arch: str, outtype: str, weights_hash: str,
                    tokenizer: GGUFTokenizer | None, failures: list[str]) -> None:
    config = ckpt.config
    for key, vtype in fmt.GENERAL_KEYS.items():
        _check_type(g, key, vtype, failures)
    if g.arch != arch:
        failures.append(f"general.architecture is {g.arch!r}, expected {arch!r}")
    if outtype in fmt.KQUANTS:      # llama.cpp's quantizer rewrote file_type and kept lmexport.outtype
        file_type, recorded = int(fmt.KQUANTS[outtype]), fmt.KQUANT_SOURCE
    else:
        file_type, recorded = int(fmt.OUTTYPES[outtype].file_type), outtype
    expected_values = {Keys.General.FILE_TYPE: file_type,
                       Keys.General.QUANTIZATION_VERSION: 2, fmt.OUTTYPE: recorded, fmt.WEIGHTS_HASH: weights_hash}
    for key, want in expected_values.items():
        if g.value(key) is not None and g.value(key) != want:
            failures.append(f"{key} is {g.value(key)!r}, expected {want!r}")
    for ck in fmt.config_keys(arch):
        key = ck.key(arch)
        if _check_type(g, key, ck.vtype, failures) and not _close(g.value(key), getattr(config, ck.field)):
            failures.append(f"{key} is {g.value(key)!r}, the checkpoint says {getattr(config, ck.field)!r}")
    for key, vtype in fmt.TOKENIZER_OPTIONAL_TYPES.items():
        _check_type(g, key, vtype, failures, required=False)

    model = g.value(Keys.Tokenizer.MODEL)
    n_vocab = config.vocab_size
    arrays = {Keys.Tokenizer.LIST: True, Keys.Tokenizer.TOKEN_TYPE: True,
              Keys.Tokenizer.SCORES: model == "llama", Keys.Tokenizer.MERGES: False}
    for key, required in arrays.items():
        f = g.fields.get(key)
        if f is None:
            if required:
                failures.append(f"missing key {key}")
        elif key != Keys.Tokenizer.MERGES and len(f.data) != n_vocab:
            failures.append(f"{key} has {len(f.data)} entries, vocab_size is {n_vocab}")
    if model == "gpt2" and Keys.Tokenizer.MERGES not in g.fields:
        failures.append(f"a gpt2 tokenizer needs {Keys.Tokenizer.MERGES}")
    if Keys.Tokenizer.TOKEN_TYPE in g.fields:
        bad = set(g.value(Keys.Tokenizer.TOKEN_TYPE)) - _TOKEN_TYPES
        if bad:
            failures.append(f"unknown token types {sorted(bad)}")
    for typ, key in fmt.TOKENIZER_ID_KEYS.items():
        value = g.value(key)
        if value is not None and not 0 <= value < n_vocab:
            failures.append(f"{key}={value} is outside the vocabulary (0..{n_vocab - 1})")
    if tokenizer is not None:
        if model != tokenizer.model:
            failures.append(f"tokenizer.ggml.model is {model!r}, expected {tokenizer.model!r}")
        if Keys.Tokenizer.LIST in g.fields and tuple(g.value(Keys.Tokenizer.LIST)) != tokenizer.tokens:
            failures.append("tokenizer.ggml.tokens differ from the checkpoint's tokenizer")
        for typ, token_id in tokenizer.special_ids.items():
            if g.value(fmt.TOKENIZER_ID_KEYS[typ]) != token_id:
                failures.append(f"{fmt.TOKENIZER_ID_KEYS[typ]} is {g.value(fmt.TOKENIZER_ID_KEYS[typ])}, "
                                f"expected {token_id}")


def validate_gguf(paths, ckpt: Checkpoint, *, arch: str, outtype: str, weights_hash: str | None = None,
                  tokenizer: GGUFTokenizer | None = None) -> ValidationReport:
    """Check the GGUF at ``paths`` (first shard or list of shards) against ``ckpt``; raise on any failure."""
    first = paths[0] if isinstance(paths, (list, tuple)) else paths
    try:
        g = open_gguf(first)
    except ArtifactError as exc:
        raise ValidationError("the written GGUF cannot be read back", [exc.one_line()]) from exc
    failures: list[str] = []
    _check_metadata(g, ckpt, arch, outtype, weights_hash or ckpt.weights_hash(), tokenizer, failures)

    config = ckpt.config
    try:
        rebuilt = g.config()
    except ArtifactError as exc:
        failures.append(exc.one_line())
        rebuilt = None
    if rebuilt is not None:
        for ck in fmt.config_keys(arch):
            if not _close(getattr(rebuilt, ck.field), getattr(config, ck.field)):
                failures.append(f"config {ck.field} reads back as {getattr(rebuilt, ck.field)!r}, "
                                f"expected {getattr(config, ck.field)!r}")
        if rebuilt.tie_word_embeddings != config.tie_word_embeddings:
            failures.append("tie_word_embeddings does not read back (output tensor present/absent wrongly)")
    failures.extend(g.tensor_problems(config))
    failures.extend(f"tensor name {n} is {len(n.encode())} bytes (limit {fmt.MAX_NAME_BYTES})"
                    for n in g.tensors if len(n.encode()) > fmt.MAX_NAME_BYTES)

    report = ValidationReport()
    kquant = outtype in fmt.KQUANTS
    out = fmt.OUTTYPES[fmt.KQUANT_SOURCE if kquant else outtype]
    for ref in g.expected(config):
        t = g.tensors.get(ref.gguf_name)
        if t is None:
            continue                                  # reported as missing above
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        want = fmt.choose_type(shape, ref.entry.role, out)
        if kquant and ref.entry.role not in fmt.F32_ROLES:
            # llama.cpp chose the matrix's type: any of its K-quant mix's types, if the file can hold it
            if t.tensor_type not in fmt.KQUANT_TYPES or not fmt.type_fits(shape, t.tensor_type):
                failures.append(f"{ref.gguf_name} is {t.tensor_type.name}, not a type of llama.cpp's "
                                f"{outtype} mix")
                continue
        elif t.tensor_type != want:
            failures.append(f"{ref.gguf_name} is {t.tensor_type.name}, the type rules say "
                            f"{want.name if want else 'nothing fits'}")
            continue
        if shape != gguf_layout_shape(ref, config):
            continue                                  # reported as mis-shaped above
        source = ckpt.tensors[ref.name].detach().float().cpu().numpy()
        back = g.canonical(ref, config)
        max_abs = float(np.max(np.abs(back - source))) if source.size else 0.0
        scale = float(np.max(np.abs(source))) if source.size else 0.0
        bound = fmt.WEIGHT_BOUNDS[t.tensor_type]
        rel = max_abs / scale if scale else max_abs
        report.round_trip.append(RoundTrip(ref.gguf_name, t.tensor_type.name, max_abs, rel, bound))
        if not np.isfinite(max_abs) or max_abs > bound * scale + fmt.ABS_FLOOR:
            failures.append(f"{ref.gguf_name} ({t.tensor_type.name}) round-trips with max error {max_abs:.3g} "
                            f"= {rel:.3g} x max|w|, bound {bound:g}")
    if failures:
        raise ValidationError(f"GGUF validation of {first.name} failed ({len(failures)} problem(s))", failures)
    worst = report.worst_by_type()
    log.debug("GGUF validated: %d tensors, worst round-trip error per type: %s", len(report.round_trip),
             ", ".join(f"{k} {v:.2e}" for k, v in sorted(worst.items())))
    return report
