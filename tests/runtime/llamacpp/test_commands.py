"""lmexport's commands on llama.cpp, run for real: generate, chat, parity --engine llama.cpp,
gguf --outtype q4_k_m, perplexity --engine llama.cpp, and the one-line error without the build."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from lmexport.exporters.gguf.write import GGUFOptions, export_gguf
from lmexport.modeling.checkpoint import load_model
from lmexport.modeling.tiny import make_model_folder
from cli_helpers import run_cli

REPO = Path(__file__).resolve().parents[3]
BUNDLED = REPO / "examples" / "liquid-metal-tiny"
PROMPT = "def add(a, b):"
# the README's quantisation table: heldout.txt, windows of 256, stride 128
PPL_BOUNDS = {"q8_0": 0.01, "q4_k_m": 0.05}


@pytest.fixture(scope="module")
def files(tmp_path_factory, patched_llamacpp):
    """Bundled model as f32, q8_0 (lmexport) and q4_k_m (lmexport gguf through llama.cpp's quantizer)."""
    root = tmp_path_factory.mktemp("llamacpp-cli")
    out = {}
    for outtype in ("f32", "q8_0", "q4_k_m"):
        out[outtype] = root / f"bundled-{outtype}.gguf"
        export_gguf(BUNDLED, out[outtype], GGUFOptions(outtype=outtype))
    return out


def engine(path, **kw):
    from lmexport.runtime.llamacpp.engine import LlamaCppEngine

    return LlamaCppEngine(path, n_ctx=256, n_threads=2, **kw)


def test_generate_cli_greedy_equals_the_engine_and_pytorch(files):
    done = run_cli("generate", files["f32"], "--prompt", PROMPT, "--max-new-tokens", "12", "--threads", "2")
    assert done.returncode == 0, done.stderr
    assert "llama.cpp" in done.stderr
    with engine(files["f32"], f32_kv=True) as eng:
        ids = eng.tokenize(PROMPT)
        new, _ = eng.greedy(ids, 12)
        expected = eng.detokenize(new)
    assert done.stdout == PROMPT + expected + "\n"
    model = load_model(BUNDLED)[0].eval()
    seq = list(ids)
    with torch.no_grad():
        for _ in range(12):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert seq[len(ids):] == new


def test_generate_cli_sampling_is_seeded_and_stops(files):
    args = ("generate", files["q8_0"], "--prompt", PROMPT, "--max-new-tokens", "24", "--temperature", "0.9",
            "--top-k", "20", "--top-p", "0.9", "--repetition-penalty", "1.1")
    a, b = run_cli(*args, "--seed", "7"), run_cli(*args, "--seed", "7")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout and a.stdout.startswith(PROMPT)
    greedy = run_cli("generate", files["q8_0"], "--prompt", PROMPT, "--max-new-tokens", "24").stdout
    cut = greedy[len(PROMPT):].strip()[:2]
    stopped = run_cli("generate", files["q8_0"], "--prompt", PROMPT, "--max-new-tokens", "24", "--stop", cut)
    assert stopped.returncode == 0 and cut not in stopped.stdout[len(PROMPT):]


def test_chat_cli_keeps_the_conversation(files):
    done = run_cli("chat", files["f32"], "--max-new-tokens", "8", input="hello\n\n/reset\nhello\n")
    assert done.returncode == 0, done.stderr
    replies = done.stdout.split("\n")
    # the same first message after /reset gives the same greedy reply
    from lmexport.runtime import ChatSession, Generator

    with engine(files["f32"]) as eng:
        chat = ChatSession(Generator(eng), max_new_tokens=8)
        want = "".join(chat.send("hello"))
        second = "".join(chat.send("and then?"))
    assert want and done.stdout.count(want) == 2, (done.stdout, want)
    assert len(chat.messages) == 4 and chat.messages[-1]["content"] == second


@pytest.mark.parametrize("outtype", ["f32", "q8_0", "q4_k_m"])
def test_parity_on_llamacpp_passes(files, outtype, tmp_path):
    report = tmp_path / "r.json"
    done = run_cli("parity", BUNDLED, files[outtype], "--engine", "llama.cpp", "--steps", "4", "--json", report)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(report.read_text())
    assert data["engine"] == "llama.cpp" and data["localised_by"] == "pytorch rebuild of the GGUF"
    assert data["preset"] == f"gguf-{outtype}" and "logits of the artifact: llama.cpp" in done.stdout
    print(outtype, {k: data["overall"][k] for k in ("max_abs", "top1", "kl_mean", "cosine_min")})
    if outtype == "f32":
        assert data["overall"]["max_abs"] < 1e-5 and data["greedy_match"]["min"] == 4


def test_parity_on_llamacpp_of_a_corrupted_file_names_the_layer(files, tmp_path):
    broken = tmp_path / "broken.gguf"
    shutil.copy(files["f32"], broken)
    reader = GGUFReader(broken, "r+")
    target = next(t for t in reader.tensors if t.name == "blk.2.attn_v.weight")
    rng = np.random.default_rng(0)
    target.data[...] = target.data + rng.standard_normal(target.data.shape).astype(np.float32) * 0.5
    reader.data.flush()
    del reader
    done = run_cli("parity", BUNDLED, broken, "--engine", "llama.cpp", "--steps", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "first divergence: layer 2 attention" in done.stdout
    assert "per-layer outputs from the pytorch rebuild of the GGUF" in done.stdout
    assert "(llama.cpp) does not match PyTorch" in done.stderr


def test_gguf_outtype_q4_k_m_writes_a_validated_k_quant_file(tmp_path, patched_llamacpp):
    # rows of 256: the Q4_K/Q6_K blocks are used (at H 128 llama.cpp falls back to q5_0/q8_0)
    folder = make_model_folder(tmp_path / "h256", seed=13, hidden_size=256, intermediate_size=512, se_reduction=8,
                               tie_word_embeddings=True)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.gguf"
    done = run_cli("gguf", folder, "-o", out, "--outtype", "q4_k_m")
    assert done.returncode == 0, done.stderr
    assert "q4_k_m" in done.stdout and "validated" in done.stdout and "Q4_K" in done.stdout
    assert sorted(p.name for p in out_dir.iterdir()) == ["m.gguf"]          # no temporaries left
    reader = GGUFReader(out)
    kinds = {t.tensor_type.name for t in reader.tensors}
    assert {"Q4_K", "Q6_K"} <= kinds
    assert next(t for t in reader.tensors if t.name == "blk.0.token_conv.weight").tensor_type.name == "F32"
    again = run_cli("gguf", folder, "-o", out, "--outtype", "q4_k_m")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    split = run_cli("gguf", folder, "-o", out_dir / "s.gguf", "--outtype", "q6_k", "--split-max-size", "1M")
    assert split.returncode == 2 and "split" in split.stderr


def test_perplexity_on_llamacpp_within_the_readme_bounds(files):
    from lmexport.modeling.tokenizer import folder_tokenizer
    from lmexport.perplexity import perplexity
    from lmexport.engine import open_artifact
    from lmexport.perplexity import engine_scorer

    ids = folder_tokenizer(BUNDLED).encode((BUNDLED / "heldout.txt").read_text(encoding="utf-8"))
    ref = perplexity(engine_scorer(open_artifact(BUNDLED)), ids, 256, 128).perplexity
    for outtype, bound in PPL_BOUNDS.items():
        llamacpp = open_artifact(files[outtype], engine="llama.cpp", n_ctx=2048, n_batch=2048, n_ubatch=512)
        ppl = perplexity(engine_scorer(llamacpp), ids, 256, 128).perplexity
        print(f"{outtype}: {ppl:.4f} vs PyTorch {ref:.4f} ({ppl / ref - 1:+.3%})")
        assert abs(ppl / ref - 1) <= bound, (outtype, ppl, ref)
    done = run_cli("perplexity", files["q8_0"], "--engine", "llama.cpp", "--text", BUNDLED / "heldout.txt",
                   "--tokenizer", BUNDLED, "--max-tokens", "600", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kind"] == "gguf (llama.cpp)"


def test_without_the_patched_build_each_command_says_how_to_build_it(tmp_path):
    # needs no llama.cpp: runs wherever the export extra is installed
    gguf = tmp_path / "bundled-f32.gguf"
    export_gguf(BUNDLED, gguf, GGUFOptions(outtype="f32"))
    fake = tmp_path / "site"
    (fake / "llama_cpp").mkdir(parents=True)
    (fake / "llama_cpp" / "__init__.py").write_text("raise ImportError('llama_cpp hidden by the test')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    for args in (["generate", gguf, "--prompt", "x"], ["chat", gguf],
                 ["parity", BUNDLED, gguf, "--engine", "llama.cpp"],
                 ["perplexity", gguf, "--engine", "llama.cpp", "--text", BUNDLED / "heldout.txt"],
                 ["gguf", BUNDLED, "-o", tmp_path / "k.gguf", "--outtype", "q4_k_m"]):
        done = run_cli(*args, env=env, input="")
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "lmexport llamacpp build" in lines[0], (args, done.stderr)
    assert not (tmp_path / "k.gguf").exists()
