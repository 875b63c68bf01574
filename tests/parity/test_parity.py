"""`lmexport parity` on real exported files: pass, fail with localisation, bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from gguf import GGUFReader

from lmexport.exporters.gguf.write import GGUFOptions, export_gguf
from lmexport.manifest import locate_tensor
from lmexport.parity.report import COLUMNS, format_table
from lmexport.parity.run import run_parity
from lmexport.modeling.tiny import make_model_folder
from cli_helpers import run_cli


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    model = make_model_folder(root / "model", seed=11)
    export_gguf(model, root / "f32.gguf", GGUFOptions(outtype="f32"))
    export_gguf(model, root / "q8_0.gguf", GGUFOptions(outtype="q8_0"))
    return root


def test_f32_gguf_passes_with_exact_numbers_and_json_has_every_table_number(folder, tmp_path):
    report_path = tmp_path / "report.json"
    done = run_cli("parity", folder / "model", folder / "f32.gguf", "--steps", "6", "--json", report_path)
    assert done.returncode == 0, done.stderr
    assert "PASS" in done.stdout and "preset gguf-f32" in done.stdout
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["overall"]["max_abs"] < 1e-5
    assert report["greedy_match"]["min"] == 6
    assert [s["step"] for s in report["steps"]] == ["prefill"] + [f"decode {i}" for i in range(1, 7)]
    for step in report["steps"] + [report["overall"]]:
        for key, _, _ in COLUMNS:
            assert isinstance(step[key], float), key
    assert report["tolerance"]["rtol"] == 1e-6 and report["tolerance"]["atol"] == 1e-6


def test_q8_0_gguf_passes_its_preset(folder):
    report = run_parity(folder / "model", folder / "q8_0.gguf", steps=4)
    assert report.preset == "gguf-q8_0" and report.passed, format_table(report)
    assert 0 < report.overall.max_abs and report.overall.top1 >= 0.9


@pytest.mark.parametrize("layer, tensor, module", [(1, "se_fc2", "se"), (0, "attn_v", "attention"),
                                                    (1, "token_conv", "token_mixing")])
def test_corrupted_gguf_fails_and_names_layer_and_module(folder, tmp_path, layer, tensor, module):
    broken = tmp_path / "broken.gguf"
    shutil.copy(folder / "f32.gguf", broken)
    reader = GGUFReader(broken, "r+")
    target = next(t for t in reader.tensors if t.name == f"blk.{layer}.{tensor}.weight")
    rng = np.random.default_rng(0)
    target.data[...] = target.data + rng.standard_normal(target.data.shape).astype(np.float32) * 0.5
    reader.data.flush()
    del reader
    done = run_cli("parity", folder / "model", broken, "--steps", "3")
    assert done.returncode == 1, done.stderr
    assert f"first divergence: layer {layer} {module}" in done.stdout
    assert f"first divergence at layer {layer} {module}" in done.stderr


def test_wrong_model_missing_and_unreadable_artifacts_exit_2(folder, tmp_path):
    other = make_model_folder(tmp_path / "other", seed=12)
    done = run_cli("parity", other, folder / "f32.gguf")
    assert done.returncode == 2 and "exported from a different model" in done.stderr
    assert "max|d|" not in done.stdout                       # reported before any numbers
    done = run_cli("parity", folder / "model", tmp_path / "missing.gguf")
    assert done.returncode == 2 and "does not exist" in done.stderr
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 60)
    done = run_cli("parity", folder / "model", junk)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    done = run_cli("parity", folder / "model", notes)
    assert done.returncode == 2 and "neither an exported ONNX folder nor a GGUF file" in done.stderr


def test_prompt_file_and_json_overwrite_rules(folder, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("def f():\n\xe9t\xe9\n".encode("latin-1"))
    done = run_cli("parity", folder / "model", folder / "f32.gguf", "--prompts", prompts)
    assert done.returncode == 2 and "not UTF-8" in done.stderr
    prompts.write_text("def f():\nclass A:\n", encoding="utf-8")
    existing = tmp_path / "r.json"
    existing.write_text("{}")
    done = run_cli("parity", folder / "model", folder / "f32.gguf", "--prompts", prompts, "--json", existing)
    assert done.returncode == 2 and "--overwrite" in done.stderr and existing.read_text() == "{}"
    done = run_cli("parity", folder / "model", folder / "f32.gguf", "--prompts", prompts, "--steps", "2",
                   "--json", existing, "--overwrite")
    assert done.returncode == 0 and json.loads(existing.read_text())["passed"]


# ---------------------------------------------------------------- ONNX artifacts

@pytest.fixture(scope="module")
def onnx_folder(folder):
    from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx
    export_onnx(folder / "model", folder / "onnx-fp32", OnnxExportOptions())
    export_onnx(folder / "model", folder / "onnx-int8", OnnxExportOptions(quantize="int8"))
    return folder


def test_fp32_onnx_passes_and_int8_passes_its_preset(onnx_folder):
    fp32 = run_parity(onnx_folder / "model", onnx_folder / "onnx-fp32", steps=6)
    assert fp32.preset == "fp32" and fp32.passed, format_table(fp32)
    assert fp32.overall.max_abs < 1e-4 and min(fp32.greedy_match) == 6
    int8 = run_parity(onnx_folder / "model", onnx_folder / "onnx-int8", steps=4)
    assert int8.preset == "int8" and int8.passed, format_table(int8)
    assert int8.overall.max_abs > fp32.overall.max_abs


@pytest.mark.parametrize("tensor, where", [("model.layers.1.self_attn.v_proj.weight", "layer 1 attention"),
                                           ("model.layers.0.se.fc2.weight", "layer 0 se"),
                                           ("model.layers.1.post_attention_layernorm.gate.weight",
                                            "layer 1 norm_post")])
def test_corrupted_onnx_data_fails_and_names_layer_and_module(onnx_folder, tmp_path, tensor, where):
    broken = tmp_path / "onnx"
    shutil.copytree(onnx_folder / "onnx-fp32", broken)
    manifest = json.loads((broken / "lmexport.json").read_text())
    _, init, columns = locate_tensor(manifest["initializers"], tensor)
    data = np.fromfile(broken / init["file"], dtype=np.uint8)
    values = data[init["offset"]:init["offset"] + init["length"]].view(np.float32)
    if columns is not None:          # packed (v_proj in q|k|v): only its own output columns
        first, end = columns
        values = values.reshape(-1, init["members"][-1]["out"][1])[:, first:end]
    values += np.random.default_rng(1).standard_normal(values.shape).astype(np.float32) * 0.5
    data.tofile(broken / init["file"])
    done = run_cli("parity", onnx_folder / "model", broken, "--steps", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"first divergence: {where}" in done.stdout


def test_onnx_folder_with_missing_or_edited_manifest_or_truncated_data(onnx_folder, tmp_path):
    broken = tmp_path / "onnx"
    shutil.copytree(onnx_folder / "onnx-fp32", broken)
    data = broken / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    done = run_cli("parity", onnx_folder / "model", broken)
    assert done.returncode == 2 and "model.onnx.data has 1000 bytes" in done.stderr
    (broken / "lmexport.json").write_text("{not json")
    done = run_cli("parity", onnx_folder / "model", broken)
    assert done.returncode == 2 and "lmexport.json is not valid JSON" in done.stderr
    (broken / "lmexport.json").unlink()
    done = run_cli("parity", onnx_folder / "model", broken)
    assert done.returncode == 2 and "has no lmexport.json" in done.stderr
