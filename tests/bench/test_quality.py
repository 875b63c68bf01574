"""The benchmark's quality column: next-token logits on fixed ids, and their KL from a reference.

Real rows, real files: a tiny Liquid-Metal model run by the PyTorch reference, exported to ONNX and
run by the runtime, and exported to GGUF and run by the patched llama.cpp through
``benchmarks/worker_llamacpp.py`` (the worker run.py uses), each through the same quality pass.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import run_cli
from lmexport.bench.memory import huge_mapped_mb
from lmexport.bench.protocol import QUALITY_NEXT_TOKENS, QUALITY_PROMPTS, quality_logits
from lmexport.compare.metrics import distribution_agreement as kl_from_reference
from lmexport.engine import open_artifact
from lmexport.modeling.checkpoint import load_model
from lmexport.modeling.tiny import make_model_folder

ROOT = Path(__file__).resolve().parents[2]
ROWS = QUALITY_PROMPTS * (1 + QUALITY_NEXT_TOKENS)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("quality") / "tiny", seed=3)


@pytest.fixture(scope="module")
def reference(model_dir):
    engine = open_artifact(model_dir, device="cpu")
    return quality_logits(engine, engine.info.vocab_size)


def full_sequence_logits(model_dir) -> np.ndarray:
    """The same positions computed without any carried state: every prompt + its next ids in one pass."""
    from lmexport.bench.protocol import QUALITY_PROMPT_TOKENS, QUALITY_SEED, prompt_ids

    model, ckpt = load_model(model_dir, dtype=torch.float32)
    ids = torch.from_numpy(prompt_ids(QUALITY_PROMPTS, QUALITY_PROMPT_TOKENS + QUALITY_NEXT_TOKENS,
                                      ckpt.config.vocab_size, QUALITY_SEED))
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        logits = model(ids, torch.ones_like(ids), pos).logits.float().numpy()
    return logits[:, QUALITY_PROMPT_TOKENS - 1:, :].reshape(-1, logits.shape[-1])


def test_quality_pass_is_the_teacher_forced_sequence(model_dir, reference):
    assert reference.shape[0] == ROWS and reference.dtype == np.float32
    full = full_sequence_logits(model_dir)
    assert np.abs(reference - full).max() <= 1e-4 * np.abs(full).max()


def test_kl_of_the_reference_with_itself_is_zero_and_grows_with_noise(reference):
    same = kl_from_reference(reference, reference)
    assert same["kl"] == pytest.approx(0.0, abs=1e-12) and same["top1"] == 1.0 and same["positions"] == ROWS
    rng = np.random.default_rng(0)
    small = kl_from_reference(reference, reference + rng.normal(0, 0.01, reference.shape).astype(np.float32))
    large = kl_from_reference(reference, reference + rng.normal(0, 0.3, reference.shape).astype(np.float32))
    assert 0 < small["kl"] < large["kl"] and small["top1"] >= large["top1"]
    shuffled = kl_from_reference(reference, reference[::-1].copy())
    assert shuffled["kl"] > 0 and shuffled["top1"] < 1.0


def test_kl_refuses_a_different_number_of_positions(reference):
    with pytest.raises(ValueError, match="rows of logits"):
        kl_from_reference(reference, reference[:-1])


def test_onnx_row_is_within_its_tolerance_of_the_reference(model_dir, reference, tmp_path):
    from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx

    out = tmp_path / "onnx"
    export_onnx(model_dir, out, OnnxExportOptions())
    engine = open_artifact(out, device="cpu", threads=1)
    got = kl_from_reference(reference, quality_logits(engine, engine.info.vocab_size))
    assert got["kl"] < 1e-8 and got["top1"] == 1.0


def test_huge_mapped_mb_reads_this_process(tmp_path):
    value = huge_mapped_mb()
    if not Path("/proc/self/smaps_rollup").exists():
        assert value is None
    else:
        assert value is not None and value >= 0.0


def test_llamacpp_worker_gives_the_gguf_logits_and_a_timing(patched_llamacpp, model_dir, reference, tmp_path):
    """benchmarks/worker_llamacpp.py reads llama.cpp's own logits (llama-cpp-python 0.3.36 leaves
    ``Llama.scores`` empty without logits_all): an f32 GGUF must match the reference."""
    gguf = tmp_path / "tiny-f32.gguf"
    proc = run_cli("gguf", model_dir, "-o", gguf, "--outtype", "f32", timeout=300)
    assert proc.returncode == 0, proc.stderr
    worker = [sys.executable, str(ROOT / "benchmarks" / "worker_llamacpp.py"), str(gguf), "--variant", "f32",
              "--threads", "1"]
    npy = tmp_path / "q.npy"
    proc = subprocess.run([*worker, "--logits", str(npy), "--flash-attn", "off"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = kl_from_reference(reference, np.load(npy))
    assert got["kl"] < 1e-6 and got["top1"] == 1.0, got
    out = tmp_path / "row.json"
    proc = subprocess.run([*worker, "--out", str(out), "--repeats", "1", "--prompt-tokens", "8", "--new-tokens", "4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())
    assert row["backend"] == "llama.cpp" and row["versions"]["flash_attn"] == "on"
    assert row["decode_tokens_per_s"]["median"] > 0 and "huge_mapped_mb" in row
