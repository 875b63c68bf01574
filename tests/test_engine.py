"""The one engine layer (lmexport/engine.py): one rule for what a path is, every kind opened in its
engine, and every command on every artifact with the same options and output. Real exports, real
runtimes: the bundled model as an ONNX folder (ONNX Runtime), a GGUF file (the patched llama.cpp)
and its model folder (PyTorch)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cli_helpers import run_cli
from conftest import BUNDLED
from lmexport.engine import ENGINES, Engine, artifact_kind, open_artifact, register
from lmexport.errors import InputError

PROMPT = "def add(a, b):"
STATS = re.compile(r"^\[\d+ prompt tokens, \d+ new tokens; prefill [\d.]+ ms; decode [\d.]+ tokens/s on cpu "
                   r"\((onnxruntime|llama\.cpp)\)\]$", re.M)


@pytest.fixture
def onnx_dir(exports):
    return exports("onnx")


@pytest.fixture
def gguf_file(exports):
    return exports("gguf", outtype="f32")


def test_artifact_kind_is_one_rule(onnx_dir, gguf_file, tmp_path):
    assert artifact_kind(onnx_dir) == "onnx"
    assert artifact_kind(gguf_file) == "gguf"
    assert artifact_kind(BUNDLED) == "pytorch"
    pte = tmp_path / "model.pte"
    pte.write_bytes(b"\0" * 16)
    assert artifact_kind(pte) == "pte"
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, message in ((tmp_path / "missing", "does not exist"),
                          (notes, "neither an exported ONNX folder nor a GGUF file"),
                          (empty, "neither lmexport.json nor config.json")):
        with pytest.raises(InputError, match=message):
            artifact_kind(path)
    with pytest.raises(InputError, match="model.lmexport.json is missing beside"):
        open_artifact(pte)                 # the .pte engine names the sidecar its export writes
    with pytest.raises(InputError, match="the llama.cpp engine does not run onnx"):
        open_artifact(onnx_dir, engine="llama.cpp")


@pytest.mark.parametrize("command", [["generate", "{p}", "--prompt", "x"], ["chat", "{p}"], ["bench", "{p}"],
                                     ["perplexity", "{p}", "--text", str(BUNDLED / "heldout.txt")]])
def test_bad_paths_are_one_line_and_exit_2(command, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    for path, message in ((tmp_path / "missing", "does not exist"),
                          (notes, "neither an exported ONNX folder nor a GGUF file")):
        done = run_cli(*(a.format(p=path) for a in command), input="")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and message in lines[0], (command, done.stderr)


def test_onnx_and_pytorch_engines_agree_on_a_left_padded_batch(onnx_dir):
    from lmexport.runtime.batch import left_pad, positions_from_mask

    ids, mask = left_pad([[1, 5, 9, 14, 3, 7], [1, 22, 8]], pad_id=0)
    pos = positions_from_mask(mask, ids.shape[1])
    got = {}
    for path in (onnx_dir, BUNDLED):
        with open_artifact(path) as engine:
            assert isinstance(engine, Engine) and engine.info.context_length > 0
            engine.reset(2)
            first = engine.step(ids, mask, pos)
            nxt = first[:, -1].argmax(-1)[:, None].astype(np.int64)
            grown = np.concatenate([mask, np.ones((2, 1), dtype=np.int64)], axis=1)
            second = engine.step(nxt, grown, positions_from_mask(grown, 1))   # the state was carried
            got[engine.info.engine] = (first[mask.astype(bool)], second[:, -1])
    (a1, a2), (b1, b2) = got["onnxruntime"], got["pytorch"]
    scale = np.abs(b1).max()
    assert np.abs(a1 - b1).max() <= 1e-4 * scale and np.abs(a2 - b2).max() <= 1e-4 * scale


def test_adding_an_engine_is_one_registration(onnx_dir, monkeypatch):
    """An engine registered under another name is what open_artifact opens when asked for."""
    monkeypatch.setitem(ENGINES, "onnx", dict(ENGINES["onnx"]))
    register("onnx", "second", "lmexport.runtime.ort:OnnxEngine")
    with open_artifact(onnx_dir, engine="second", threads=1) as engine:
        assert engine.info.kind == "onnx" and engine.tokenizer.encode(PROMPT)


# ---------------------------------------------------------------- GGUF files through every command
def test_gguf_engine_matches_pytorch(gguf_file, patched_llamacpp):
    ids = np.asarray([[1, 5, 9, 14, 3, 7]], dtype=np.int64)
    outs = []
    for path, kw in ((gguf_file, dict(engine="llama.cpp", f32_kv=True, n_ctx=64)), (BUNDLED, {})):
        with open_artifact(path, **kw) as engine:
            engine.reset(1)
            outs.append(engine.step(ids, np.ones_like(ids), np.arange(6)[None]))
    assert np.abs(outs[0] - outs[1]).max() <= 1e-4 * np.abs(outs[1]).max()


def test_bench_gives_a_gguf_row(gguf_file, patched_llamacpp):
    done = run_cli("bench", gguf_file, "--repeats", "1", "--prompt-tokens", "8", "--new-tokens", "4", "--threads",
                   "1", "--json")
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["backend"] == "llama.cpp" and row["variant"] == "f32" and row["device"] == "cpu"
    assert row["decode_tokens_per_s"]["median"] > 0 and row["prefill_ms"]["median"] > 0 and row["peak_rss_mb"] > 0


def test_generate_gguf_with_chat_and_truncate(gguf_file, onnx_dir, patched_llamacpp):
    chat = run_cli("generate", gguf_file, "--prompt", "hello", "--chat", "--max-new-tokens", "8")
    assert chat.returncode == 0, chat.stderr
    same_on_onnx = run_cli("generate", onnx_dir, "--prompt", "hello", "--chat", "--max-new-tokens", "8")
    assert chat.stdout == same_on_onnx.stdout and chat.stdout.strip()     # the reply alone, the same text
    long_prompt = "word " * 3000
    refused = run_cli("generate", gguf_file, "--prompt", long_prompt, "--max-new-tokens", "4")
    assert refused.returncode == 2 and "--truncate" in refused.stderr and "Traceback" not in refused.stderr
    kept = run_cli("generate", gguf_file, "--prompt", long_prompt, "--max-new-tokens", "4", "--truncate")
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.startswith(long_prompt) and len(kept.stdout) > len(long_prompt)


def test_the_same_options_and_stats_line_on_onnx_and_gguf(gguf_file, onnx_dir, patched_llamacpp):
    args = ["--prompt", PROMPT, "--max-new-tokens", "12", "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9",
            "--repetition-penalty", "1.1", "--seed", "3", "--stop", "\n\n\n", "--stats"]
    onnx, gguf = run_cli("generate", onnx_dir, *args), run_cli("generate", gguf_file, *args)
    assert onnx.returncode == 0 and gguf.returncode == 0, onnx.stderr + gguf.stderr
    assert STATS.search(onnx.stderr).group(1) == "onnxruntime" and STATS.search(gguf.stderr).group(1) == "llama.cpp"
    # one sampler: the same seed draws the same tokens from (nearly) the same logits
    assert onnx.stdout == gguf.stdout and onnx.stdout.startswith(PROMPT)
    alias = run_cli("llamacpp", "generate", gguf_file, *args)
    assert alias.returncode == 0 and alias.stdout == gguf.stdout


def test_chat_on_gguf_keeps_the_conversation_like_onnx(gguf_file, onnx_dir, patched_llamacpp):
    stdin = "hello\nwhat is a list?\n/reset\nhello\n"
    onnx = run_cli("chat", onnx_dir, "--max-new-tokens", "8", input=stdin)
    gguf = run_cli("chat", gguf_file, "--max-new-tokens", "8", input=stdin)
    assert onnx.returncode == 0 and gguf.returncode == 0, onnx.stderr + gguf.stderr
    assert gguf.stdout == onnx.stdout and gguf.stdout.count("> ") == 4
