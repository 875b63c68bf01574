"""Hostile liquidmetal GGUFs against the patched llama.cpp's loader (issue #27, class 6).

Each file is loaded (and a few tokens decoded) in a fresh process, so a crash shows as a signal
exit, not as a dead test run. Every file must be refused with llama.cpp's reason, or run; none may
crash, abort in a GGML_ASSERT or hang. A table of named damages, then the bounded fuzz loop of
tests/gguf_fuzz.py (seeded; the same loop runs under AddressSanitizer in scripts/fuzz_gguf_asan.sh).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

import sys
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import gguf_fuzz  # noqa: E402

ARCH = "liquidmetal"


@pytest.fixture(scope="module")
def base(patched_llamacpp, tmp_path_factory):
    path = gguf_fuzz.make_base(tmp_path_factory.mktemp("hostile-gguf"))
    assert gguf_fuzz.load(path).kind == "ran"
    return path


def edited(base: Path, folder: Path, *, keys: dict | None = None, rename_key: str | None = None,
           dims: tuple[str, int, int] | None = None, rename: tuple[str, str] | None = None,
           cut: int | None = None) -> Path:
    path = folder / "damaged.gguf"
    shutil.copy(base, path)
    reader = GGUFReader(path, "r+")
    for key, value in (keys or {}).items():
        field = reader.fields[f"{ARCH}.{key}"]
        field.parts[field.data[0]][0] = value
    if rename_key:
        reader.fields[f"{ARCH}.{rename_key}"].parts[1][-1] = ord("~")
    tensors = {t.name: t for t in reader.tensors}
    if dims:
        name, i, value = dims
        tensors[name].field.parts[3][i] = value
    if rename:
        old, new = rename
        tensors[old].field.parts[1][:] = np.frombuffer(new.encode(), dtype=np.uint8)
    reader.data.flush()
    del reader
    if cut is not None:
        with open(path, "r+b") as f:
            f.truncate(cut)
    return path


# (name, damage, words of llama.cpp's reason)
CASES = [
    ("kernel size 0", dict(keys={"token_mixing.kernel_size": 0}), "kernel_size"),
    ("kernel size past the context", dict(keys={"token_mixing.kernel_size": 100_000}), "kernel_size"),
    ("SE reduction 0", dict(keys={"se.reduction": 0}), "se.reduction"),
    ("SE reduction that disagrees with the SE width", dict(keys={"se.reduction": 3}), "se.hidden_size"),
    ("SE width 0", dict(keys={"se.hidden_size": 0}), "se.hidden_size"),
    ("head count 0", dict(keys={"attention.head_count": 0}), "head_count"),
    ("KV head count 0", dict(keys={"attention.head_count_kv": 0}), "head_count_kv"),
    ("KV heads not dividing the heads", dict(keys={"attention.head_count_kv": 3}), "head_count_kv"),
    ("rope dimensions 0", dict(keys={"rope.dimension_count": 0}), "rope.dimension_count"),
    ("block count past the maximum", dict(keys={"block_count": 65536}), "block_count"),
    ("block count 0", dict(keys={"block_count": 0}), "block_count"),
    ("NaN norm epsilon", dict(keys={"attention.layer_norm_rms_epsilon": float("nan")}), "epsilon"),
    ("context length 0", dict(keys={"context_length": 0}), "context_length"),
    ("conv tensor of the wrong length", dict(dims=("blk.0.token_conv.weight", 0, 5)), "token_conv"),
    ("missing conv tensor", dict(rename=("blk.1.token_conv.weight", "blk.1.token_conv.weighx")), "token_conv"),
    ("duplicated tensor", dict(rename=("blk.1.token_conv.weight", "blk.0.token_conv.weight")), "token_conv"),
    ("missing kernel size key (default 3), conv of length 5",
     dict(rename_key="token_mixing.kernel_size", dims=("blk.0.token_conv.weight", 0, 5)), "token_conv"),
    ("truncated in the tensor data", dict(cut=60_000), "file"),
    ("truncated in the header", dict(cut=300), ""),
]


@pytest.mark.parametrize("name,damage,reason", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_file_is_refused_with_a_reason(name, damage, reason, base, tmp_path):
    outcome = gguf_fuzz.load(edited(base, tmp_path, **damage))
    assert outcome.kind == "refused", outcome
    assert outcome.detail and reason in outcome.detail, outcome.detail


def test_the_bounded_fuzz_loop_finds_no_crash(base):
    result = gguf_fuzz.fuzz(base, seed=27, count=40, seconds=240, log=lambda line: None)
    tally = result["tally"]
    assert sum(tally.values()) >= 10, tally                  # the time bound left a real sample
    assert result["crashes"] == [], result["crashes"]
    assert result["refused_without_reason"] == [], result["refused_without_reason"]
    assert tally["refused"] > 0
