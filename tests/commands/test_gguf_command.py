"""`lmexport gguf` end to end through the CLI, and read by code we did not write."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from lmexport.modeling.tiny import make_llama_folder, make_model_folder
from cli_helpers import run_cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("cli") / "tiny", seed=0)


def test_cli_writes_and_gguf_dump_lists_it(model_dir, tmp_path):
    out = tmp_path / "m.gguf"
    r = run_cli("gguf", model_dir, "-o", out, "--outtype", "q8_0")
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout and "validated" in r.stdout
    assert "2 tensor(s) fell back to F16" in r.stdout          # se_fc2 rows of 16
    dump = shutil.which("gguf-dump")
    cmd = [dump] if dump else [sys.executable, "-m", "gguf.scripts.gguf_dump"]
    d = subprocess.run([*cmd, str(out)], capture_output=True, text=True, timeout=120)
    assert d.returncode == 0, d.stderr
    for text in ("general.architecture = 'liquidmetal'", "liquidmetal.token_mixing.kernel_size = 3",
                 "blk.1.token_conv.weight", "blk.0.se_fc1.weight", "blk.0.attn_norm_gate.weight",
                 "liquidmetal.context_mode = 'streaming'", "lmexport.source.weights_hash"):
        assert text in d.stdout, text


def test_cli_errors(model_dir, tmp_path):
    r = run_cli("gguf", model_dir, "-o", tmp_path / "m.gguf", "--outtype", "q3_k")
    assert r.returncode == 2 and "Invalid value for '--outtype'" in r.stderr
    r = run_cli("gguf", model_dir, "-o", tmp_path / "missing" / "m.gguf")
    assert r.returncode == 2 and r.stderr.startswith("error: output folder") and "does not exist" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("gguf", model_dir, "-o", tmp_path / "m.gguf", "--arch", "llama")
    assert r.returncode == 2 and "holds the Liquid-Metal modules" in r.stderr
    r = run_cli("gguf", model_dir, "-o", tmp_path / "m.gguf", "--split-max-size", "lots")
    assert r.returncode == 2 and "cannot read the size" in r.stderr
    assert not list(tmp_path.iterdir())


def test_split_output_through_the_cli(model_dir, tmp_path):
    r = run_cli("gguf", model_dir, "-o", tmp_path / "m.gguf", "--outtype", "f16", "--split-max-size", "100K")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"m-{i:05d}-of-{len(names):05d}.gguf" for i in range(1, len(names) + 1)] and len(names) > 1


def test_llama_gguf_loads_in_transformers_with_the_original_logits(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder = make_llama_folder(tmp_path / "llama", seed=3)
    out = tmp_path / "gguf" / "llama.gguf"
    out.parent.mkdir()
    r = run_cli("gguf", folder, "-o", out, "--outtype", "f32", "--arch", "llama")
    assert r.returncode == 0, r.stderr
    original = LlamaForCausalLM.from_pretrained(folder).eval()
    loaded = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name).eval()
    ids = torch.randint(4, original.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (original(ids).logits - loaded(ids).logits).abs().max().item()
    assert diff <= 1e-5

    # the byte-level BPE tokenizer comes back from the file and tokenizes as the original does,
    # BOS rule included (add_bos_token in the file is what transformers does with the folder)
    tok = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    text = "def add(a, b):\n    return a + b"
    expected = AutoTokenizer.from_pretrained(folder)(text)["input_ids"]   # the tiny tokenizer adds no BOS
    assert tok(text)["input_ids"] == expected and expected[0] != 1
    assert tok.eos_token == "</s>" and tok.bos_token == "<s>"


def test_auto_arch_writes_llama_for_a_plain_llama(tmp_path):
    folder = make_llama_folder(tmp_path / "llama")
    r = run_cli("gguf", folder, "-o", tmp_path / "auto.gguf", "--outtype", "q4_0")
    assert r.returncode == 0, r.stderr
    assert "llama GGUF, q4_0" in r.stdout
