"""benchmarks/quant_table.py on the bundled model, a few rows: the Markdown and JSON it writes, and the
README block it replaces (on a copy of the README). Speed is not measured here (--no-bench)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "quant_table.py"


def llamacpp_built() -> bool:
    from lmexport.runtime.llamacpp import build
    return build.is_built()


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    work = tmp_path_factory.mktemp("quant-table")
    readme = work / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    rows = ["onnx-fp32", "onnx-int4", *(["q4_0.gguf"] if llamacpp_built() else [])]
    done = subprocess.run([sys.executable, SCRIPT, "--models", "bundled", "--rows", *rows, "--no-bench", "--no-pte",
                           "--work", work, "--write-readme", readme], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr
    return work, rows, readme


def test_rows_and_numbers(table):
    work, rows, _ = table
    res = json.loads((work / "quant-table.json").read_text())["models"]["bundled"]["rows"]
    assert list(res) == ["pytorch", *rows]
    ref, fp32 = res["pytorch"]["score"], res["onnx-fp32"]["score"]
    assert ref["n_targets"] == fp32["n_targets"] == 9912
    assert abs(fp32["perplexity"] / ref["perplexity"] - 1) < 1e-4
    assert fp32["kl_mean"] < 1e-6
    assert res["onnx-int4"]["score"]["kl_mean"] > 1e-4
    for row in rows:
        assert res[row]["size_mb"] > 0
        assert res[row]["score"]["perplexity"] > 1
    assert res["onnx-int4"]["size_mb"] < res["onnx-fp32"]["size_mb"]
    md = (work / "quant-table.md").read_text()
    for row in rows:
        assert res[row]["label"] in md
    assert f"| {res['pytorch']['label']} | {ref['perplexity']:.4f} |" in md


def test_pytorch_perplexity_is_lmexport_perplexitys(table):
    work, _, _ = table
    ref = json.loads((work / "quant-table.json").read_text())["models"]["bundled"]["rows"]["pytorch"]["score"]
    bundled = ROOT / "examples" / "liquid-metal-tiny"
    done = subprocess.run([sys.executable, "-m", "lmexport.cli", "perplexity", bundled,
                           "--text", bundled / "heldout.txt", "--window", "256", "--stride", "128", "--json"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert abs(json.loads(done.stdout)["perplexity"] / ref["perplexity"] - 1) < 1e-6


def test_readme_block_replaced(table):
    work, _, readme = table
    md = (work / "quant-table.md").read_text().strip()
    text = readme.read_text()
    original = (ROOT / "README.md").read_text()
    begin, end = "<!-- quant-table:begin -->", "<!-- quant-table:end -->"
    assert text.count(begin) == text.count(end) == 1
    assert text.split(begin)[1].split(end)[0].strip() == md
    assert text.split(begin)[0] == original.split(begin)[0]
    assert text.split(end)[1] == original.split(end)[1]
