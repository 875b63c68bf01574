"""``lmexport bench``: a smoke run on a tiny ONNX folder and a tiny PyTorch folder.

No timing is asserted (speed is measured by benchmarks/run.py, not by tests): the
JSON report must hold every field, positive, and the protocol must drive a model
the way generation does (prefill, then one token per call with growing state).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cli_helpers import run_cli
from lmexport.bench.protocol import WARMUP_DECODE_STEPS, Workload, measure, prompt_ids
from lmexport.modeling.tiny import make_model_folder

SMOKE = ["--repeats", "1", "--prompt-tokens", "8", "--new-tokens", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("bench") / "tiny", seed=0)


@pytest.fixture(scope="module")
def onnx_dir(model_dir, tmp_path_factory):
    from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx

    out = tmp_path_factory.mktemp("bench-onnx") / "onnx"
    export_onnx(model_dir, out, OnnxExportOptions())
    return out


def check_report(report: dict, backend: str) -> None:
    assert report["backend"] == backend
    for key in ("load_s", "peak_rss_mb", "rss_after_load_mb", "prefill_tokens_per_s"):
        assert report[key] > 0, key
    for key in ("prefill_ms", "decode_tokens_per_s", "decode_ms_per_step"):
        stats = report[key]
        assert 0 < stats["min"] <= stats["median"] <= stats["max"], key
        assert len(stats["values"]) == report["repeats"] == 1
    assert (report["prompt_tokens"], report["new_tokens"], report["batch"]) == (8, 4, 1)


def test_bench_onnx_folder_json(onnx_dir):
    proc = run_cli("bench", str(onnx_dir), *SMOKE, "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    check_report(report, "onnxruntime")
    assert report["variant"] == "fp32"


def test_bench_pytorch_folder_json(model_dir):
    proc = run_cli("bench", str(model_dir), *SMOKE, "--torch-dtype", "bf16", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    check_report(report, "pytorch")
    assert report["variant"] == "bf16"


def test_bench_onnx_path_never_imports_torch(onnx_dir):
    code = ("import sys; from lmexport.bench import Workload, run_bench; "
            f"r = run_bench({str(onnx_dir)!r}, Workload(4, 2, 2, 1), device='cpu'); "
            "assert r.decode_tokens_per_s.median > 0 and r.batch == 2; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_bench_text_report(model_dir):
    proc = run_cli("bench", str(model_dir), *SMOKE)
    assert proc.returncode == 0, proc.stderr
    assert "decode" in proc.stdout and "tokens/s" in proc.stdout and "peak RSS" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["bench", "{tmp}/missing"], "does not exist"),
    (["bench", "{tmp}"], "neither lmexport.json nor config.json"),
    (["bench", "{model}", "--repeats", "0"], "--repeats must be at least 1"),
    (["bench", "{model}", "--torch-dtype", "fp16", "--device", "cpu"], "fp16 is for CUDA"),
])
def test_bench_bad_input_is_one_line(args, message, tmp_path, model_dir):
    proc = run_cli(*(a.format(tmp=tmp_path, model=model_dir) for a in args))
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bench_torch_dtype_refused_for_onnx(onnx_dir):
    proc = run_cli("bench", str(onnx_dir), *SMOKE, "--torch-dtype", "bf16")
    assert proc.returncode == 2 and "--torch-dtype applies to a PyTorch model folder" in proc.stderr


class Recorder:
    """A stand-in engine that records how it is called; its logits make 7 the greedy token."""

    def __init__(self):
        self.calls, self.resets = [], 0

    def reset(self, batch):
        self.resets += 1

    def step(self, ids, mask, positions):
        self.calls.append((ids.copy(), mask.copy(), positions.copy()))
        logits = np.zeros((*ids.shape, 50), dtype=np.float32)
        logits[..., 7] = 1.0
        return logits


def test_protocol_prefills_then_feeds_one_token_per_call():
    rec = Recorder()
    w = Workload(prompt_tokens=5, new_tokens=3, batch=2, repeats=2)
    prefill, rate, per_step = measure(rec, vocab_size=50, workload=w)
    warm = 1 + min(w.new_tokens, WARMUP_DECODE_STEPS)
    assert rec.resets == 1 + w.repeats and len(rec.calls) == warm + w.repeats * (1 + w.new_tokens)
    timed = rec.calls[warm:warm + 1 + w.new_tokens]
    ids, mask, pos = timed[0]
    assert ids.shape == (2, 5) and mask.shape == (2, 5) and (pos == np.arange(5)).all()
    assert (ids == prompt_ids(2, 5, 50)).all() and ids.min() >= 4
    for i, (ids, mask, pos) in enumerate(timed[1:]):
        assert ids.shape == (2, 1) and (ids == 7).all()          # the greedy token is fed back
        assert mask.shape == (2, 5 + i + 1) and (pos == 5 + i).all()
    assert len(rate.values) == w.repeats and rate.median > 0 and prefill.min > 0 and per_step.max > 0
