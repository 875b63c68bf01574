"""What quantisation costs, measured as held-out perplexity of the bundled trained model.

Bounds (relative to PyTorch fp32 on the same tokens; measured on the full heldout.txt:
ONNX fp32 +0.000%, fp16 -0.000%, int8 +0.08%, int4 +0.91%; GGUF q8_0 -0.02%, q4_0 +1.13%):
ONNX fp32 within 0.1%, int8 within 1%, int4 within 5%.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tokenizers import Tokenizer

from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx
from lmexport.perplexity import perplexity
from lmexport.engine import open_artifact
from lmexport.perplexity import engine_scorer
from conftest import BUNDLED

BOUNDS = {"none": 0.001, "int8": 0.01, "int4": 0.05}
MAX_TOKENS = 2048


@pytest.fixture(scope="module")
def heldout_ids():
    tok = Tokenizer.from_file(str(BUNDLED / "tokenizer.json"))
    return tok.encode((BUNDLED / "heldout.txt").read_text(encoding="utf-8"), add_special_tokens=False).ids[:MAX_TOKENS]


@pytest.fixture(scope="module")
def reference_ppl(heldout_ids):
    return perplexity(engine_scorer(open_artifact(BUNDLED)), heldout_ids, 256, 128).perplexity


@pytest.mark.parametrize("quantize", ["none", "int8", "int4"])
def test_onnx_perplexity_within_documented_bound(quantize, heldout_ids, reference_ppl, tmp_path):
    folder = tmp_path / f"onnx-{quantize}"
    export_onnx(BUNDLED, folder, OnnxExportOptions(quantize=quantize, validate=False))
    ppl = perplexity(engine_scorer(open_artifact(folder)), heldout_ids, 256, 128).perplexity
    assert abs(ppl / reference_ppl - 1) <= BOUNDS[quantize], (quantize, ppl, reference_ppl)
    if quantize != "none":
        assert ppl != reference_ppl     # the quantised graph really is different


def test_perplexity_cli_json(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text((BUNDLED / "heldout.txt").read_text(encoding="utf-8")[:3000], encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "lmexport.cli", "perplexity", str(BUNDLED), "--text", str(text),
                           "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["kind"] == "pytorch" and 1 < result["perplexity"] < 10_000 and result["n_targets"] > 100
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    done = subprocess.run([sys.executable, "-m", "lmexport.cli", "perplexity", str(BUNDLED), "--text", str(bad)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "not UTF-8" in done.stderr
