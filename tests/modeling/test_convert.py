"""`lmexport convert`: a plain Llama becomes a Liquid-Metal model within the distance it reports."""
import json
import subprocess
import sys

import torch

from lmexport.modeling.checkpoint import load_model, read_checkpoint
from lmexport.modeling.convert import ConvertOptions, convert, hf_llama_reference, probe_ids
from lmexport.modeling.tiny import make_llama_folder


def test_converted_model_stays_within_the_reported_distance(tmp_path):
    llama = make_llama_folder(tmp_path / "llama", seed=4)
    report = convert(llama, tmp_path / "lm", ConvertOptions(gate_bias=8.0))
    assert 0 < report.max_abs_logit_diff < 5e-3
    model, ckpt = load_model(tmp_path / "lm")
    assert ckpt.config.token_mixing_kernel_size == 3 and ckpt.config.context_mode == "streaming"
    assert (tmp_path / "lm" / "tokenizer.json").is_file()
    original = read_checkpoint(llama, llama_only=True)
    reference = hf_llama_reference(original.config, original.tensors)
    ids = probe_ids(llama, model.config.vocab_size)
    with torch.no_grad():
        diff = (reference(input_ids=ids).logits - model(ids).logits).abs().max().item()
    assert diff <= report.max_abs_logit_diff * 1.0001
    stored = json.loads((tmp_path / "lm" / "config.json").read_text())
    assert stored["lmexport_conversion"]["probe_max_abs_logit_diff"] == report.max_abs_logit_diff
    # a longer decode from the converted model still tracks the original closely
    long_ids = torch.randint(0, model.config.vocab_size, (1, 40))
    with torch.no_grad():
        drift = (reference(input_ids=long_ids).logits - model(long_ids).logits).abs().max().item()
    assert drift < 5e-3


def test_larger_gate_bias_gives_a_smaller_distance(tmp_path):
    llama = make_llama_folder(tmp_path / "llama", seed=1)
    loose = convert(llama, tmp_path / "a", ConvertOptions(gate_bias=4.0))
    tight = convert(llama, tmp_path / "b", ConvertOptions(gate_bias=12.0))
    assert tight.max_abs_logit_diff < loose.max_abs_logit_diff


def test_convert_cli(tmp_path):
    llama = make_llama_folder(tmp_path / "llama", seed=2)
    out = tmp_path / "lm"
    cmd = [sys.executable, "-m", "lmexport.cli", "convert", str(llama), "-o", str(out), "--kernel-size", "4"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "largest |logit difference|" in done.stdout
    assert json.loads((out / "config.json").read_text())["token_mixing_kernel_size"] == 4
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [f"error: {out} already exists (pass --overwrite to replace it)"]
    assert "Traceback" not in again.stderr


def test_converted_checkpoint_exports_to_onnx_and_passes_parity(tmp_path):
    """A converted model holds many equal tensors (zero weights, equal gate biases, zero
    conv biases); each must stay its own named initializer in the exported graph."""
    from lmexport.exporters.onnx.export import export_onnx
    from lmexport.manifest import Manifest, stored_tensors
    from lmexport.parity.run import run_parity

    llama = make_llama_folder(tmp_path / "llama", seed=5)
    convert(llama, tmp_path / "lm")
    export_onnx(tmp_path / "lm", tmp_path / "onnx")
    mapped = stored_tensors(Manifest.read(tmp_path / "onnx").initializers)
    assert "model.layers.1.token_mixing.conv.bias" in mapped and "model.layers.0.se.fc1.weight" in mapped
    assert run_parity(tmp_path / "lm", tmp_path / "onnx", steps=3).passed
